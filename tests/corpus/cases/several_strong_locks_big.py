# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case several_strong_locks_big: Index build and type change on big tables in one transaction: both locks held until commit."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["create-index-blocking", "alter-column-type", "several-strong-locks"],
    "why": "Index build and type change on big tables in one transaction: both locks held until commit.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddIndex("big", models.Index(fields=["qty"], name="big_qty_idx")),
        migrations.AlterField("mid", "qty", models.BigIntegerField()),
    ]
