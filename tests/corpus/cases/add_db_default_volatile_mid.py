# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case add_db_default_volatile_mid: Volatile default rewrites a 50k-row table: short but real ACCESS EXCLUSIVE rewrite."""

from django.contrib.postgres.functions import RandomUUID
from django.db import migrations, models

CASE = {
    "risk": "medium",
    "rules": ["add-column-volatile-db-default"],
    "why": "Volatile default rewrites a 50k-row table: short but real ACCESS EXCLUSIVE rewrite.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("mid", "token", models.UUIDField(db_default=RandomUUID())),
    ]
