"""Nullable column (low)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("catalog", "0001_initial")]
    operations = [migrations.AddField("product", "note", models.TextField(null=True))]
