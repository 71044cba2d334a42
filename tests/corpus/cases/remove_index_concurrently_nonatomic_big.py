"""Corpus case remove_index_concurrently_nonatomic_big: RemoveIndexConcurrently outside a transaction."""

from django.contrib.postgres.operations import RemoveIndexConcurrently
from django.db import migrations

CASE = {
    "risk": "low",
    "rules": ["non-atomic-migration"],
    "why": "RemoveIndexConcurrently outside a transaction.",
}


class Migration(migrations.Migration):
    atomic = False
    operations = [
        RemoveIndexConcurrently("big", "corpus_big_code_idx"),
    ]
