"""Corpus case add_unique_nullable_big: unique=True builds a unique index under lock on 1.2M rows."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["add-nullable-column", "add-unique-constraint"],
    "why": "unique=True builds a unique index under lock on 1.2M rows.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("big", "ext_id", models.CharField(max_length=20, null=True, unique=True)),
    ]
