"""Corpus case delete_model_big: Old code uses the table; data lost."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["delete-model"],
    "why": "Old code uses the table; data lost.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.DeleteModel("Big"),
    ]
