"""Corpus case runsql_delete_empty: DELETE on an empty table, reversible."""

from django.db import migrations

CASE = {
    "risk": "low",
    "rules": ["raw-sql-data-change"],
    "why": "DELETE on an empty table, reversible.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('DELETE FROM corpus_empty WHERE qty < 0', 'SELECT 1'),
    ]
