"""Corpus case remove_field_big: Old code still selects the column."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["remove-field"],
    "why": "Old code still selects the column.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RemoveField("big", "note"),
    ]
