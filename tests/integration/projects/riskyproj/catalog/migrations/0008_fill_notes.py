"""RunSQL without reverse_sql (irreversible)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("catalog", "0007_fill_titles")]
    operations = [migrations.RunSQL("UPDATE catalog_product SET note = 'n/a' WHERE note IS NULL")]
