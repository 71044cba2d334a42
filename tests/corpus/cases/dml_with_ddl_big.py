# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case dml_with_ddl_big: ADD COLUMN then a data step in one transaction: ACCESS EXCLUSIVE on 1.2M rows held for the whole data step."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["add-nullable-column", "run-python", "dml-with-ddl"],
    "why": "ADD COLUMN then a data step in one transaction: ACCESS EXCLUSIVE on 1.2M rows held for the whole data step.",
}


def forwards(apps, schema_editor):
    Big = apps.get_model("c_dml_with_ddl_big", "Big")
    Big.objects.filter(note__isnull=True).update(note="")


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("big", "extra", models.CharField(max_length=30, null=True)),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
