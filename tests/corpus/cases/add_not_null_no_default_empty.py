# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case add_not_null_no_default_empty: Empty table, but old code's INSERTs do not send the column: backward-incompatible."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["not-null-no-default"],
    "why": "Empty table, but old code's INSERTs do not send the column: backward-incompatible.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("empty", "level", models.IntegerField()),
    ]
