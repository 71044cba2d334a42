"""Corpus case alter_set_db_default_big: SET DEFAULT with a constant: catalog only."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["catalog-change"],
    "why": "SET DEFAULT with a constant: catalog only.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "qty", models.IntegerField(db_default=0)),
    ]
