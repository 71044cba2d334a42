"""Corpus case add_index_mid: Blocking index build on 50k rows: brief."""

from django.db import migrations, models

CASE = {
    "risk": "medium",
    "rules": ["create-index-blocking"],
    "why": "Blocking index build on 50k rows: brief.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddIndex("mid", models.Index(fields=["qty"], name="mid_qty_idx")),
    ]
