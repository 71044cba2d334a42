"""Corpus case runsql_drop_index_big: DROP INDEX without CONCURRENTLY: brief ACCESS EXCLUSIVE, queues behind readers."""

from django.db import migrations

CASE = {
    "risk": "medium",
    "rules": ["drop-index-blocking"],
    "why": "DROP INDEX without CONCURRENTLY: brief ACCESS EXCLUSIVE, queues behind readers.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('DROP INDEX corpus_big_code_idx', 'CREATE INDEX corpus_big_code_idx ON corpus_big (code)'),
    ]
