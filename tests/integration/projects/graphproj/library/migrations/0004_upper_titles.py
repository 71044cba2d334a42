"""RunPython without reverse_code (irreversible)."""

from django.db import migrations


def upper_titles(apps, schema_editor):
    Book = apps.get_model("library", "Book")
    for book in Book.objects.all():
        book.title = book.title.upper()
        book.save(update_fields=["title"])


class Migration(migrations.Migration):
    dependencies = [("library", "0003_fill_subtitles")]
    operations = [migrations.RunPython(upper_titles)]
