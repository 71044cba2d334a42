"""Corpus case runsql_create_table_no_reverse: Same without reverse_sql: cannot be unapplied."""

from django.db import migrations

CASE = {
    "risk": "medium",
    "rules": ["run-sql-irreversible"],
    "why": "Same without reverse_sql: cannot be unapplied.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL("CREATE TABLE corpus_audit (id bigserial PRIMARY KEY, what text)"),
    ]
