"""Corpus case alter_int_to_bigint_empty: Rewrite of an empty table."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["alter-column-type"],
    "why": "Rewrite of an empty table.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("empty", "qty", models.BigIntegerField()),
    ]
