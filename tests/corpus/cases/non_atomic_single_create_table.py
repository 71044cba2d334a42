"""Corpus case non_atomic_single_create_table: atomic=False with one step: nothing to half-apply."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["non-atomic-migration"],
    "why": "atomic=False with one step: nothing to half-apply.",
}


class Migration(migrations.Migration):
    atomic = False
    operations = [
        migrations.CreateModel("Thing", [("id", models.BigAutoField(primary_key=True))]),
    ]
