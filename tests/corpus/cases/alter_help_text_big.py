"""Corpus case alter_help_text_big: help_text emits no SQL."""

from django.db import migrations, models

CASE = {
    "risk": "none",
    "rules": ["state-only"],
    "why": "help_text emits no SQL.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "name", models.CharField(max_length=100, help_text="Display name")),
    ]
