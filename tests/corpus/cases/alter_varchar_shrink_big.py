"""Corpus case alter_varchar_shrink_big: varchar(20) -> varchar(10) rechecks every row under ACCESS EXCLUSIVE."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["alter-column-type"],
    "why": "varchar(20) -> varchar(10) rechecks every row under ACCESS EXCLUSIVE.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "code", models.CharField(max_length=10)),
    ]
