from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0006_vendor_unique_together")]

    operations = [
        migrations.AddField(model_name="item", name="note", field=models.CharField(max_length=40, null=True)),
    ]
