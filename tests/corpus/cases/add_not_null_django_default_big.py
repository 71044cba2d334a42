# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case add_not_null_django_default_big: Django-only default is dropped after ADD COLUMN: old code's INSERTs fail (backward-incompatible)."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["not-null-django-default"],
    "why": "Django-only default is dropped after ADD COLUMN: old code's INSERTs fail (backward-incompatible).",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("big", "flag", models.BooleanField(default=False)),
    ]
