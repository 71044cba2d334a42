# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case add_index_concurrently_atomic_big: AddIndexConcurrently in an atomic migration fails at deploy (CONCURRENTLY cannot run in a transaction)."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models

CASE = {
    "risk": "medium",
    "rules": ["concurrently-in-atomic"],
    "why": "AddIndexConcurrently in an atomic migration fails at deploy (CONCURRENTLY cannot run in a transaction).",
}


class Migration(migrations.Migration):
    operations = [
        AddIndexConcurrently("big", models.Index(fields=["qty"], name="big_qty_idx")),
    ]
