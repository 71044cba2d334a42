"""Nullable column."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("library", "0004_upper_titles")]
    operations = [
        migrations.AddField(model_name="book", name="pages", field=models.IntegerField(null=True)),
    ]
