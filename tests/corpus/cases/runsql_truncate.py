"""Corpus case runsql_truncate: TRUNCATE destroys data."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["raw-sql-destructive"],
    "why": "TRUNCATE destroys data.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('TRUNCATE corpus_mid', 'SELECT 1'),
    ]
