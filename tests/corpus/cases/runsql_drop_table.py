"""Corpus case runsql_drop_table: DROP TABLE of a table old code uses."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["raw-sql-destructive"],
    "why": "DROP TABLE of a table old code uses.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('DROP TABLE corpus_mid', 'SELECT 1'),
    ]
