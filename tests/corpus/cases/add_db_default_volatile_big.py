# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case add_db_default_volatile_big: gen_random_uuid() default is volatile: full table rewrite under ACCESS EXCLUSIVE on 1.2M rows."""

from django.contrib.postgres.functions import RandomUUID
from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["add-column-volatile-db-default"],
    "why": "gen_random_uuid() default is volatile: full table rewrite under ACCESS EXCLUSIVE on 1.2M rows.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("big", "token", models.UUIDField(db_default=RandomUUID())),
    ]
