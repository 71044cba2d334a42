"""Corpus case rename_model_legacy: The default table name follows the model: the table is renamed."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["rename-model"],
    "why": "The default table name follows the model: the table is renamed.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RenameModel("Legacy", "Heritage"),
    ]
