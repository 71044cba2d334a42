"""Corpus case add_unique_constraint_big: UNIQUE constraint on 1.2M rows builds its index under lock."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["add-unique-constraint"],
    "why": "UNIQUE constraint on 1.2M rows builds its index under lock.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddConstraint("big", models.UniqueConstraint(fields=["name"], name="big_name_uniq")),
    ]
