"""Corpus case alter_varchar_widen_big: varchar(100) -> varchar(200): catalog only."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["alter-column-type-no-rewrite"],
    "why": "varchar(100) -> varchar(200): catalog only.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "name", models.CharField(max_length=200)),
    ]
