# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case runsql_fk_validating_big: FOREIGN KEY without NOT VALID scans 1.2M rows under lock."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["add-constraint-validating"],
    "why": "FOREIGN KEY without NOT VALID scans 1.2M rows under lock.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL(
            'ALTER TABLE corpus_big ADD CONSTRAINT big_qty_fk FOREIGN KEY (qty) REFERENCES corpus_mid (id)',
            'ALTER TABLE corpus_big DROP CONSTRAINT big_qty_fk',
        ),
    ]
