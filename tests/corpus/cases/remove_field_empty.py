"""Corpus case remove_field_empty: Backward-incompatible whatever the size."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["remove-field"],
    "why": "Backward-incompatible whatever the size.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RemoveField("empty", "note"),
    ]
