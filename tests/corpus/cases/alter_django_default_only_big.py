"""Corpus case alter_django_default_only_big: A Django-side default is not stored in the database."""

from django.db import migrations, models

CASE = {
    "risk": "none",
    "rules": ["state-only"],
    "why": "A Django-side default is not stored in the database.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "qty", models.IntegerField(default=1)),
    ]
