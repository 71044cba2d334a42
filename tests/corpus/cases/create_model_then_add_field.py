"""Corpus case create_model_then_add_field: NOT NULL column on a table created by this plan."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["create-table", "add-column-new-table"],
    "why": "NOT NULL column on a table created by this plan.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.CreateModel("Thing", [("id", models.BigAutoField(primary_key=True))]),
        migrations.AddField("thing", "size", models.IntegerField()),
    ]
