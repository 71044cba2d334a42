# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case add_fk_nullable_big: Nullable FK on a big table: Django builds its index without CONCURRENTLY and validates the FK under lock."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["add-nullable-column", "create-index-blocking", "add-constraint-validating"],
    "why": "Nullable FK on a big table: Django builds its index without CONCURRENTLY and validates the FK under lock.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("big", "mid", models.ForeignKey("mid", null=True, on_delete=models.SET_NULL)),
    ]
