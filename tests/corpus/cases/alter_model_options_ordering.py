"""Corpus case alter_model_options_ordering: ordering / verbose_name: state only."""

from django.db import migrations

CASE = {
    "risk": "none",
    "rules": ["state-only"],
    "why": "ordering / verbose_name: state only.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterModelOptions("big", {"ordering": ["name"], "verbose_name": "big one"}),
    ]
