# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case runsql_add_primary_key_big: ADD PRIMARY KEY builds a unique index (and checks NOT NULL) under ACCESS EXCLUSIVE."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["add-primary-key"],
    "why": "ADD PRIMARY KEY builds a unique index (and checks NOT NULL) under ACCESS EXCLUSIVE.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL('ALTER TABLE corpus_big ADD PRIMARY KEY (code, qty)', 'ALTER TABLE corpus_big DROP CONSTRAINT corpus_big_pkey'),
    ]
