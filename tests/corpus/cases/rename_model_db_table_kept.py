"""Corpus case rename_model_db_table_kept: Meta.db_table is set: renaming the model does not touch the table."""

from django.db import migrations

CASE = {
    "risk": "none",
    "rules": ["state-only"],
    "why": "Meta.db_table is set: renaming the model does not touch the table.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RenameModel("Big", "Large"),
    ]
