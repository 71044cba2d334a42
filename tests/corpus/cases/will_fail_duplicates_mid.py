"""Corpus case will_fail_duplicates_mid: a unique constraint over values that repeat."""

from django.db import migrations, models

CASE = {
    "risk": "medium",
    "rules": ["add-unique-constraint", "will-fail-duplicates"],
    "why": "corpus_mid.note is 'x' on all 50k rows: the unique constraint cannot be built.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddConstraint("mid", models.UniqueConstraint(fields=["note"], name="mid_note_uniq")),
    ]
