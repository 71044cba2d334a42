"""help_text only: no SQL at all."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("catalog", "0010_rename_product_old_title")]
    operations = [
        migrations.AlterField("product", "name", models.CharField(help_text="Shown in the shop.", max_length=100)),
    ]
