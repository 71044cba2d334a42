"""RunPython with reverse_code (reversible)."""

from django.db import migrations


def fill_subtitles(apps, schema_editor):
    Book = apps.get_model("library", "Book")
    Book.objects.filter(subtitle__isnull=True).update(subtitle="")


def clear_subtitles(apps, schema_editor):
    Book = apps.get_model("library", "Book")
    Book.objects.filter(subtitle="").update(subtitle=None)


class Migration(migrations.Migration):
    dependencies = [("library", "0002_book_subtitle")]
    operations = [migrations.RunPython(fill_subtitles, reverse_code=clear_subtitles)]
