# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case several_strong_locks_mid: Two lock-taking statements on a 50k-row table and an empty one in one transaction."""

from django.db import migrations, models

CASE = {
    "risk": "medium",
    "rules": ["create-index-blocking", "add-constraint-validating", "several-strong-locks"],
    "why": "Two lock-taking statements on a 50k-row table and an empty one in one transaction.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddIndex("mid", models.Index(fields=["qty"], name="mid_qty_idx")),
        migrations.AddConstraint("mid", models.CheckConstraint(condition=models.Q(qty__gte=0), name="mid_qty_pos")),
    ]
