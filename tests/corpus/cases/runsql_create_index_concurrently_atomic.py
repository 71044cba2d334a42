# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case runsql_create_index_concurrently_atomic: CREATE INDEX CONCURRENTLY inside an atomic migration fails at deploy."""

from django.db import migrations

CASE = {
    "risk": "medium",
    "rules": ["concurrently-in-atomic"],
    "why": "CREATE INDEX CONCURRENTLY inside an atomic migration fails at deploy.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('CREATE INDEX CONCURRENTLY big_qty_idx ON corpus_big (qty)', 'DROP INDEX big_qty_idx'),
    ]
