"""Dropping a column the running code still reads (high)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("catalog", "0008_fill_notes")]
    operations = [migrations.RemoveField("product", "legacy_code")]
