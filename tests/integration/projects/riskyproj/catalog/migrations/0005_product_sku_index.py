"""Index built without CONCURRENTLY on an existing table (medium)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("catalog", "0004_product_active")]
    operations = [migrations.AddIndex("product", models.Index(fields=["sku"], name="catalog_sku_idx"))]
