"""Corpus case alter_add_db_index_big: db_index=True on an existing big column: blocking index build."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["create-index-blocking"],
    "why": "db_index=True on an existing big column: blocking index build.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "qty", models.IntegerField(db_index=True)),
    ]
