"""Corpus case add_check_big: CHECK validated under lock over 1.2M rows."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["add-constraint-validating"],
    "why": "CHECK validated under lock over 1.2M rows.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddConstraint("big", models.CheckConstraint(condition=models.Q(qty__gte=0), name="big_qty_pos")),
    ]
