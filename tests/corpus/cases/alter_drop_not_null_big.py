"""Corpus case alter_drop_not_null_big: DROP NOT NULL is catalog-only and compatible."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["catalog-change"],
    "why": "DROP NOT NULL is catalog-only and compatible.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "name", models.CharField(max_length=100, null=True)),
    ]
