from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0007_item_note")]

    operations = [
        # no default: Django does not backfill, SET NOT NULL needs the column free of NULLs
        migrations.AlterField(model_name="item", name="note", field=models.CharField(max_length=40)),
    ]
