"""Corpus case alter_db_comment_big: COMMENT ON COLUMN (Django also re-states the unchanged type): catalog only."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["alter-column-type-no-rewrite"],
    "why": "COMMENT ON COLUMN (Django also re-states the unchanged type): catalog only.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "name", models.CharField(max_length=100, db_comment="shown name")),
    ]
