"""Renaming a column the running code still uses (high)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("catalog", "0009_remove_product_legacy_code")]
    operations = [migrations.RenameField("product", "old_title", "title")]
