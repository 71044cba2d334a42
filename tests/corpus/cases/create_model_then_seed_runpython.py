# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case create_model_then_seed_runpython: Seeding a new table: the data step cannot be graded (medium),
but it is not DML mixed with DDL on a live table.
"""

from django.db import migrations, models

CASE = {
    "risk": "medium",
    "rules": ["create-table", "run-python"],
    "why": "Seeding a new table: the data step cannot be graded (medium), but it is not DML mixed with DDL on a live table.",
}


def seed(apps, schema_editor):
    apps.get_model("c_create_model_then_seed_runpython", "Thing").objects.create()


class Migration(migrations.Migration):
    operations = [
        migrations.CreateModel("Thing", [("id", models.BigAutoField(primary_key=True))]),
        migrations.RunPython(seed, migrations.RunPython.noop),
    ]
