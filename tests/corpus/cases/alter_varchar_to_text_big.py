"""Corpus case alter_varchar_to_text_big: varchar -> text: binary compatible, no rewrite."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["alter-column-type-no-rewrite"],
    "why": "varchar -> text: binary compatible, no rewrite.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "name", models.TextField()),
    ]
