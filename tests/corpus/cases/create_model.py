# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case create_model: New table only."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["create-table"],
    "why": "New table only.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.CreateModel("Thing", [("id", models.BigAutoField(primary_key=True)), ("name", models.CharField(max_length=50))]),
    ]
