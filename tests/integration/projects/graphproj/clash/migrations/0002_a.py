"""One of two leaf nodes of the clash app (a conflict: makemigrations --merge)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("clash", "0001_initial")]
    operations = [
        migrations.AddField(model_name="thing", name="a", field=models.IntegerField(null=True)),
    ]
