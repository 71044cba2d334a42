# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case runsql_rename_column: RENAME COLUMN breaks old code."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["raw-sql-destructive"],
    "why": "RENAME COLUMN breaks old code.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('ALTER TABLE corpus_big RENAME COLUMN note TO remark', 'ALTER TABLE corpus_big RENAME COLUMN remark TO note'),
    ]
