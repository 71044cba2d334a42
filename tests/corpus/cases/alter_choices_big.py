"""Corpus case alter_choices_big: choices emit no SQL."""

from django.db import migrations, models

CASE = {
    "risk": "none",
    "rules": ["state-only"],
    "why": "choices emit no SQL.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "code", models.CharField(max_length=20, choices=[("a", "A"), ("b", "B")])),
    ]
