"""Corpus case alter_db_column_big: db_column change renames the column: old code breaks."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["rename-field"],
    "why": "db_column change renames the column: old code breaks.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "name", models.CharField(max_length=100, db_column="title")),
    ]
