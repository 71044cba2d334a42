"""Corpus case add_check_empty: CHECK on an empty table."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["add-constraint-validating"],
    "why": "CHECK on an empty table.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddConstraint("empty", models.CheckConstraint(condition=models.Q(qty__gte=0), name="empty_qty_pos")),
    ]
