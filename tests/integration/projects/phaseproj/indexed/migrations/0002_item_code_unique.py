"""A unique index built CONCURRENTLY: on duplicates (or when lock_timeout fires while it waits for the
writers of the table) it fails and leaves an INVALID index named indexed_item_code_uniq behind."""

from django.db import migrations


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("indexed", "0001_initial")]
    operations = [
        migrations.RunSQL(
            "CREATE UNIQUE INDEX CONCURRENTLY indexed_item_code_uniq ON indexed_item (code)",
            reverse_sql="DROP INDEX CONCURRENTLY IF EXISTS indexed_item_code_uniq",
        ),
    ]
