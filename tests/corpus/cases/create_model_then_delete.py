"""Corpus case create_model_then_delete: Create and drop within the plan."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["create-table", "drop-on-new-table"],
    "why": "Create and drop within the plan.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.CreateModel("Thing", [("id", models.BigAutoField(primary_key=True))]),
        migrations.DeleteModel("Thing"),
    ]
