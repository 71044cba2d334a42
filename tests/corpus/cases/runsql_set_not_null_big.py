# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case runsql_set_not_null_big: Raw SET NOT NULL on 1.2M rows."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["alter-field-set-not-null"],
    "why": "Raw SET NOT NULL on 1.2M rows.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('ALTER TABLE corpus_big ALTER COLUMN email SET NOT NULL', 'ALTER TABLE corpus_big ALTER COLUMN email DROP NOT NULL'),
    ]
