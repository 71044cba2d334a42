# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case add_not_null_django_default_empty: Backward-incompatible whatever the size: old code's INSERTs into the empty table fail."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["not-null-django-default"],
    "why": "Backward-incompatible whatever the size: old code's INSERTs into the empty table fail.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("empty", "flag", models.BooleanField(default=False)),
    ]
