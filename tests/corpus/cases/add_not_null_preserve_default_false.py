# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case add_not_null_preserve_default_false: makemigrations' one-off default (preserve_default=False): NOT NULL without a database default."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["not-null-django-default"],
    "why": "makemigrations' one-off default (preserve_default=False): NOT NULL without a database default.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("big", "rank", models.IntegerField(default=0), preserve_default=False),
    ]
