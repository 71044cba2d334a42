from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0005_item_vendor_fk")]

    operations = [
        migrations.AlterUniqueTogether(name="vendor", unique_together={("name", "country")}),
    ]
