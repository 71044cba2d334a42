"""Corpus case alter_int_to_bigint_big: integer -> bigint rewrites 1.2M rows under ACCESS EXCLUSIVE."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["alter-column-type"],
    "why": "integer -> bigint rewrites 1.2M rows under ACCESS EXCLUSIVE.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "qty", models.BigIntegerField()),
    ]
