# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case runsql_alter_type_big: Raw ALTER COLUMN TYPE bigint rewrites 1.2M rows."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["alter-column-type"],
    "why": "Raw ALTER COLUMN TYPE bigint rewrites 1.2M rows.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('ALTER TABLE corpus_big ALTER COLUMN qty TYPE bigint', 'ALTER TABLE corpus_big ALTER COLUMN qty TYPE integer'),
    ]
