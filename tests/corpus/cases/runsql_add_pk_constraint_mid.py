# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case runsql_add_pk_constraint_mid: Named PRIMARY KEY constraint on 50k rows."""

from django.db import migrations

CASE = {
    "risk": "medium",
    "rules": ["add-primary-key"],
    "why": "Named PRIMARY KEY constraint on 50k rows.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('ALTER TABLE corpus_mid ADD CONSTRAINT corpus_mid_pk2 PRIMARY KEY (qty)', 'ALTER TABLE corpus_mid DROP CONSTRAINT corpus_mid_pk2'),
    ]
