"""Corpus case add_indexed_nullable_mid: db_index=True builds the index with a SHARE lock on a 50k-row table."""

from django.db import migrations, models

CASE = {
    "risk": "medium",
    "rules": ["add-nullable-column", "create-index-blocking"],
    "why": "db_index=True builds the index with a SHARE lock on a 50k-row table.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("mid", "tag", models.CharField(max_length=20, null=True, db_index=True)),
    ]
