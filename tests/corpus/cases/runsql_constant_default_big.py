# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case runsql_constant_default_big: Raw ADD COLUMN with a constant default: catalog only on PostgreSQL >= 11."""

from django.db import migrations

CASE = {
    "risk": "low",
    "rules": ["catalog-change"],
    "why": "Raw ADD COLUMN with a constant default: catalog only on PostgreSQL >= 11.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('ALTER TABLE corpus_big ADD COLUMN active boolean NOT NULL DEFAULT true', 'ALTER TABLE corpus_big DROP COLUMN active'),
    ]
