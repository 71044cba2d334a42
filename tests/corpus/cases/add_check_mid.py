"""Corpus case add_check_mid: CHECK validated under lock over 50k rows."""

from django.db import migrations, models

CASE = {
    "risk": "medium",
    "rules": ["add-constraint-validating"],
    "why": "CHECK validated under lock over 50k rows.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddConstraint("mid", models.CheckConstraint(condition=models.Q(qty__gte=0), name="mid_qty_pos")),
    ]
