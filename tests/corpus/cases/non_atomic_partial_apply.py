# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case non_atomic_partial_apply: atomic=False with several schema steps: a failure leaves the first applied and the migration unrecorded."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models

CASE = {
    "risk": "medium",
    "rules": ["non-atomic-partial-apply"],
    "why": "atomic=False with several schema steps: a failure leaves the first applied and the migration unrecorded.",
}


class Migration(migrations.Migration):
    atomic = False
    operations = [
        migrations.AddField("big", "extra", models.CharField(max_length=30, null=True)),
        AddIndexConcurrently("big", models.Index(fields=["extra"], name="big_extra_idx")),
    ]
