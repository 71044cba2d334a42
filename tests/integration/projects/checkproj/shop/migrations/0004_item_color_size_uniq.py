from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_item_code_unique")]

    operations = [
        migrations.AddConstraint(
            model_name="item",
            constraint=models.UniqueConstraint(fields=("color", "size"), name="shop_item_color_size_uniq"),
        ),
    ]
