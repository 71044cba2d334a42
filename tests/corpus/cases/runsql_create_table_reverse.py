"""Corpus case runsql_create_table_reverse: RunSQL that only creates a new table, with its reverse."""

from django.db import migrations

CASE = {
    "risk": "low",
    "rules": ["catalog-change"],
    "why": "RunSQL that only creates a new table, with its reverse.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('CREATE TABLE corpus_audit (id bigserial PRIMARY KEY, what text)', 'DROP TABLE corpus_audit'),
    ]
