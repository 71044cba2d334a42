# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case remove_index_big: DROP INDEX without CONCURRENTLY: ACCESS EXCLUSIVE, queued behind every running query."""

from django.db import migrations

CASE = {
    "risk": "medium",
    "rules": ["drop-index-blocking"],
    "why": "DROP INDEX without CONCURRENTLY: ACCESS EXCLUSIVE, queued behind every running query.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RemoveIndex("big", "corpus_big_code_idx"),
    ]
