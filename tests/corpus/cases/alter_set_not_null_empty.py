# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case alter_set_not_null_empty: Old code still writes NULL into the column: backward-incompatible whatever the size."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["alter-field-set-not-null"],
    "why": "Old code still writes NULL into the column: backward-incompatible whatever the size.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("empty", "email", models.CharField(max_length=100)),
    ]
