"""Corpus case rename_field_big: Old code uses the old column name."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["rename-field"],
    "why": "Old code uses the old column name.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RenameField("big", "note", "remark"),
    ]
