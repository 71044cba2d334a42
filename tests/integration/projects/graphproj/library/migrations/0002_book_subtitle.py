"""Nullable column (replaced, with 0001, by 0001_squashed_0002_book_subtitle)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("library", "0001_initial")]
    operations = [
        migrations.AddField(model_name="book", name="subtitle", field=models.CharField(max_length=100, null=True)),
    ]
