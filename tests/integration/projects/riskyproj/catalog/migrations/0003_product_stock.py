"""NOT NULL column with only a Django default (high: old code's INSERTs fail)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("catalog", "0002_product_note")]
    operations = [migrations.AddField("product", "stock", models.IntegerField(default=0))]
