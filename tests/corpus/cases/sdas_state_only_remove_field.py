# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case sdas_state_only_remove_field: SeparateDatabaseAndState without database operations: the column stays, code stops using it."""

from django.db import migrations

CASE = {
    "risk": "none",
    "rules": ["state-only"],
    "why": "SeparateDatabaseAndState without database operations: the column stays, code stops using it.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.RemoveField("big", "note")]),
    ]
