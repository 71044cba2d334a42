"""Corpus case runsql_create_index_big: Raw CREATE INDEX without CONCURRENTLY on 1.2M rows."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["create-index-blocking"],
    "why": "Raw CREATE INDEX without CONCURRENTLY on 1.2M rows.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('CREATE INDEX big_qty_idx ON corpus_big (qty)', 'DROP INDEX big_qty_idx'),
    ]
