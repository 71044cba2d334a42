"""Corpus case runpython_no_reverse: Data step without reverse_code."""

from django.db import migrations

CASE = {
    "risk": "medium",
    "rules": ["run-python", "run-python-irreversible"],
    "why": "Data step without reverse_code.",
}


def forwards(apps, schema_editor):
    Big = apps.get_model("c_runpython_no_reverse", "Big")
    Big.objects.filter(note__isnull=True).update(note="")


class Migration(migrations.Migration):
    operations = [
        migrations.RunPython(forwards),
    ]
