"""Corpus case rename_index_big: ALTER INDEX ... RENAME is catalog only."""

from django.db import migrations

CASE = {
    "risk": "low",
    "rules": ["catalog-change"],
    "why": "ALTER INDEX ... RENAME is catalog only.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RenameIndex("big", new_name="big_code_idx2", old_name="corpus_big_code_idx"),
    ]
