"""Corpus case alter_unique_mid: unique=True on a 50k-row table: unique index under lock."""

from django.db import migrations, models

CASE = {
    "risk": "medium",
    "rules": ["add-unique-constraint"],
    "why": "unique=True on a 50k-row table: unique index under lock.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("mid", "name", models.CharField(max_length=100, unique=True)),
    ]
