# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case add_not_null_no_default_big: NOT NULL without any default on a table with rows: the migration fails, old code breaks."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["not-null-no-default"],
    "why": "NOT NULL without any default on a table with rows: the migration fails, old code breaks.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("big", "level", models.IntegerField()),
    ]
