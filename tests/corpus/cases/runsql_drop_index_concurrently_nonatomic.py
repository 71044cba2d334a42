# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case runsql_drop_index_concurrently_nonatomic: DROP INDEX CONCURRENTLY outside a transaction."""

from django.db import migrations

CASE = {
    "risk": "low",
    "rules": ["non-atomic-migration"],
    "why": "DROP INDEX CONCURRENTLY outside a transaction.",
}


class Migration(migrations.Migration):
    atomic = False
    operations = [
        migrations.RunSQL('DROP INDEX CONCURRENTLY corpus_big_code_idx', 'CREATE INDEX CONCURRENTLY corpus_big_code_idx ON corpus_big (code)'),
    ]
