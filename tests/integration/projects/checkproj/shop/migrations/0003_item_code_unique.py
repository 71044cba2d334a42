from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_item_sku_not_null")]

    operations = [
        migrations.AlterField(model_name="item", name="code", field=models.CharField(max_length=20, unique=True)),
    ]
