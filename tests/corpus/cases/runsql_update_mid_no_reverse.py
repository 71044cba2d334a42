"""Corpus case runsql_update_mid_no_reverse: UPDATE of a 50k-row table, no reverse_sql."""

from django.db import migrations

CASE = {
    "risk": "medium",
    "rules": ["raw-sql-data-change", "run-sql-irreversible"],
    "why": "UPDATE of a 50k-row table, no reverse_sql.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL("UPDATE corpus_mid SET note = 'y'"),
    ]
