# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case runsql_volatile_default_big: Raw ADD COLUMN with a volatile default rewrites 1.2M rows."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["add-column-volatile-db-default"],
    "why": "Raw ADD COLUMN with a volatile default rewrites 1.2M rows.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('ALTER TABLE corpus_big ADD COLUMN token uuid DEFAULT gen_random_uuid()', 'ALTER TABLE corpus_big DROP COLUMN token'),
    ]
