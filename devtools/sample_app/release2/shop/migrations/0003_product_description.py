"""Low risk: a nullable column; release 1 keeps inserting products without it."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_seed_products")]

    operations = [
        migrations.AddField(
            model_name="product",
            name="description",
            field=models.TextField(blank=True, null=True),
        ),
    ]
