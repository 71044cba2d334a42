import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0004_item_color_size_uniq")]

    operations = [
        migrations.AlterField(
            model_name="item",
            name="vendor",
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.CASCADE, to="shop.vendor"),
        ),
    ]
