"""Corpus case add_nullable_big: Nullable column: catalog-only, old code leaves it NULL."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["add-nullable-column"],
    "why": "Nullable column: catalog-only, old code leaves it NULL.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("big", "extra", models.CharField(max_length=30, null=True)),
    ]
