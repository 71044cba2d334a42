"""Corpus case add_index_concurrently_nonatomic_big: AddIndexConcurrently in an atomic=False migration: the safe way."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["non-atomic-migration"],
    "why": "AddIndexConcurrently in an atomic=False migration: the safe way.",
}


class Migration(migrations.Migration):
    atomic = False
    operations = [
        AddIndexConcurrently("big", models.Index(fields=["qty"], name="big_qty_idx")),
    ]
