"""Corpus case alter_text_to_varchar_big: text -> varchar(50) scans every row under ACCESS EXCLUSIVE."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["alter-column-type"],
    "why": "text -> varchar(50) scans every row under ACCESS EXCLUSIVE.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "note", models.CharField(max_length=50, null=True)),
    ]
