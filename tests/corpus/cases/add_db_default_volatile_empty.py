"""Corpus case add_db_default_volatile_empty: Volatile default on an empty table: nothing to rewrite."""

from django.contrib.postgres.functions import RandomUUID
from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["add-column-volatile-db-default"],
    "why": "Volatile default on an empty table: nothing to rewrite.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("empty", "token", models.UUIDField(db_default=RandomUUID())),
    ]
