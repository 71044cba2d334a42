"""Dropping a unique_together: Django looks the constraint name up in the live schema."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("catalog", "0011_alter_product_name_help_text")]
    operations = [migrations.AlterUniqueTogether("category", set())]
