"""Corpus case mixed_phase_mid: one migration adds a column and drops another."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["remove-field", "mixed-phase-migration"],
    "why": "the drop breaks the old code in the pre-deploy phase; the add would be late in the post-deploy one.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("mid", "nickname", models.CharField(max_length=30, null=True)),
        migrations.RemoveField("mid", "email"),
    ]
