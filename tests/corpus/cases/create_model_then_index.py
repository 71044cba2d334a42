# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case create_model_then_index: Indexes on a table created in the same migration."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["create-table"],
    "why": "Indexes on a table created in the same migration.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.CreateModel("Thing", [("id", models.BigAutoField(primary_key=True)), ("code", models.CharField(max_length=20))]),
        migrations.AddIndex("thing", models.Index(fields=["code"], name="thing_code_idx")),
        migrations.AddConstraint("thing", models.UniqueConstraint(fields=["code"], name="thing_code_uniq")),
    ]
