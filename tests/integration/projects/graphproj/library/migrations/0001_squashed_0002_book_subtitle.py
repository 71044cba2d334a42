"""Squash of 0001_initial and 0002_book_subtitle."""

from django.db import migrations, models


class Migration(migrations.Migration):
    replaces = [("library", "0001_initial"), ("library", "0002_book_subtitle")]
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Book",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("title", models.CharField(max_length=100)),
                ("subtitle", models.CharField(max_length=100, null=True)),
            ],
        ),
    ]
