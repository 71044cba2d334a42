"""Corpus case runpython_with_reverse: Data step inside the deploy, reversible."""

from django.db import migrations

CASE = {
    "risk": "medium",
    "rules": ["run-python"],
    "why": "Data step inside the deploy, reversible.",
}


def forwards(apps, schema_editor):
    Big = apps.get_model("c_runpython_with_reverse", "Big")
    Big.objects.filter(note__isnull=True).update(note="")


class Migration(migrations.Migration):
    operations = [
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
