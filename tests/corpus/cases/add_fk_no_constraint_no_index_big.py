# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case add_fk_no_constraint_no_index_big: db_constraint=False, db_index=False: only a nullable column is added."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["add-nullable-column"],
    "why": "db_constraint=False, db_index=False: only a nullable column is added.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("big", "mid", models.ForeignKey("mid", null=True, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False)),
    ]
