# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case create_model_fk_to_big: New table with a FK to an existing big table: the FK's validation and index are on the new, empty table."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["create-table"],
    "why": "New table with a FK to an existing big table: the FK's validation and index are on the new, empty table.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.CreateModel("Line", [("id", models.BigAutoField(primary_key=True)), ("big", models.ForeignKey("big", on_delete=models.CASCADE))]),
    ]
