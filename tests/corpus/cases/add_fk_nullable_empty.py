"""Corpus case add_fk_nullable_empty: Same FK on an empty table: index build and validation are instant."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["add-nullable-column", "create-index-blocking", "add-constraint-validating"],
    "why": "Same FK on an empty table: index build and validation are instant.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("empty", "mid", models.ForeignKey("mid", null=True, on_delete=models.SET_NULL)),
    ]
