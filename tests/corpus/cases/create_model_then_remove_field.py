# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case create_model_then_remove_field: Dropping a column of a table created by this plan."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["create-table", "drop-on-new-table"],
    "why": "Dropping a column of a table created by this plan.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.CreateModel("Thing", [("id", models.BigAutoField(primary_key=True)), ("tmp", models.IntegerField(null=True))]),
        migrations.RemoveField("thing", "tmp"),
    ]
