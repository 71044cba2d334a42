"""Column type change: integer -> bigint rewrites the table (medium/high)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("catalog", "0005_product_sku_index")]
    operations = [migrations.AlterField("product", "views", models.BigIntegerField(default=0))]
