# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case add_partial_unique_big: A conditional UniqueConstraint is a CREATE UNIQUE INDEX without CONCURRENTLY."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["create-index-blocking"],
    "why": "A conditional UniqueConstraint is a CREATE UNIQUE INDEX without CONCURRENTLY.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddConstraint("big", models.UniqueConstraint(fields=["name"], condition=models.Q(qty__gt=0), name="big_name_pos_uniq")),
    ]
