# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case alter_set_not_null_with_default_mid: null -> not null with a Django default: UPDATE of the NULL rows, then SET NOT NULL; old code writes NULL."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["alter-field-set-not-null"],
    "why": "null -> not null with a Django default: UPDATE of the NULL rows, then SET NOT NULL; old code writes NULL.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("mid", "email", models.CharField(max_length=100, default="none")),
    ]
