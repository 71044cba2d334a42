# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case runsql_fk_not_valid_big: FOREIGN KEY ... NOT VALID: no validation scan."""

from django.db import migrations

CASE = {
    "risk": "low",
    "rules": ["catalog-change"],
    "why": "FOREIGN KEY ... NOT VALID: no validation scan.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL(
            'ALTER TABLE corpus_big ADD CONSTRAINT big_qty_fk FOREIGN KEY (qty) REFERENCES corpus_mid (id) NOT VALID',
            'ALTER TABLE corpus_big DROP CONSTRAINT big_qty_fk',
        ),
    ]
