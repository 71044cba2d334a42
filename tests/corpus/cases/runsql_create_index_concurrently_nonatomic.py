# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case runsql_create_index_concurrently_nonatomic: Raw CREATE INDEX CONCURRENTLY outside a transaction."""

from django.db import migrations

CASE = {
    "risk": "low",
    "rules": ["non-atomic-migration"],
    "why": "Raw CREATE INDEX CONCURRENTLY outside a transaction.",
}


class Migration(migrations.Migration):
    atomic = False
    operations = [
        migrations.RunSQL('CREATE INDEX CONCURRENTLY big_qty_idx ON corpus_big (qty)', 'DROP INDEX CONCURRENTLY big_qty_idx'),
    ]
