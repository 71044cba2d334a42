"""Corpus case add_nullable_int_empty: Nullable column on an empty table."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["add-nullable-column"],
    "why": "Nullable column on an empty table.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("empty", "score", models.IntegerField(null=True)),
    ]
