"""RunPython without reverse_code (irreversible)."""

from django.db import migrations


def fill_titles(apps, schema_editor):
    Product = apps.get_model("catalog", "Product")
    Product.objects.filter(old_title="").update(old_title="untitled")


class Migration(migrations.Migration):
    dependencies = [("catalog", "0006_alter_product_views")]
    operations = [migrations.RunPython(fill_titles)]
