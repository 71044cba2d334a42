"""NOT NULL column with a database default (low)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("catalog", "0003_product_stock")]
    operations = [migrations.AddField("product", "active", models.BooleanField(db_default=True))]
