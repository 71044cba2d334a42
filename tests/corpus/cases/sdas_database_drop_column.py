# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case sdas_database_drop_column: SeparateDatabaseAndState whose database operation drops a column the old code reads."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["raw-sql-destructive"],
    "why": "SeparateDatabaseAndState whose database operation drops a column the old code reads.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.RemoveField("big", "note")],
            database_operations=[migrations.RunSQL("ALTER TABLE corpus_big DROP COLUMN note", migrations.RunSQL.noop)],
        ),
    ]
