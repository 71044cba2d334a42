"""Corpus case runsql_update_big: UPDATE of 1.2M rows inside the deploy's transaction."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["raw-sql-data-change"],
    "why": "UPDATE of 1.2M rows inside the deploy's transaction.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL("UPDATE corpus_big SET note = '' WHERE note IS NULL", 'SELECT 1'),
    ]
