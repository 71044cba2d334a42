"""Corpus case alter_set_not_null_big: SET NOT NULL scans 1.2M rows under ACCESS EXCLUSIVE, and old code writes NULL."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["alter-field-set-not-null"],
    "why": "SET NOT NULL scans 1.2M rows under ACCESS EXCLUSIVE, and old code writes NULL.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "email", models.CharField(max_length=100)),
    ]
