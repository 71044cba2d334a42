"""Corpus case add_index_big: CREATE INDEX without CONCURRENTLY on 1.2M rows blocks writes."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["create-index-blocking"],
    "why": "CREATE INDEX without CONCURRENTLY on 1.2M rows blocks writes.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddIndex("big", models.Index(fields=["qty"], name="big_qty_idx")),
    ]
