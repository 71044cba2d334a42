# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case runsql_check_not_valid_big: CHECK ... NOT VALID: no validation scan."""

from django.db import migrations

CASE = {
    "risk": "low",
    "rules": ["catalog-change"],
    "why": "CHECK ... NOT VALID: no validation scan.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('ALTER TABLE corpus_big ADD CONSTRAINT big_qty_pos CHECK (qty >= 0) NOT VALID', 'ALTER TABLE corpus_big DROP CONSTRAINT big_qty_pos'),
    ]
