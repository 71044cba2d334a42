"""Corpus case alter_int_to_bigint_mid: Rewrite of a 50k-row table: brief but real."""

from django.db import migrations, models

CASE = {
    "risk": "medium",
    "rules": ["alter-column-type"],
    "why": "Rewrite of a 50k-row table: brief but real.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("mid", "qty", models.BigIntegerField()),
    ]
