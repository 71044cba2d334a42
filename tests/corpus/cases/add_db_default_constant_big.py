# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case add_db_default_constant_big: Constant db_default on PostgreSQL >= 11: default kept in the catalog, no rewrite; old INSERTs get it."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["add-column-db-default"],
    "why": "Constant db_default on PostgreSQL >= 11: default kept in the catalog, no rewrite; old INSERTs get it.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("big", "active", models.BooleanField(db_default=True)),
    ]
