"""Corpus case add_index_empty: Index on an empty table."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["create-index-blocking"],
    "why": "Index on an empty table.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddIndex("empty", models.Index(fields=["qty"], name="empty_qty_idx")),
    ]
