# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case rename_index_old_fields_missing: RenameIndex(old_fields=...) introspects the live schema; no such
index exists: the migration will fail at deploy.
"""

from django.db import migrations

CASE = {
    "risk": "medium",
    "rules": ["sql-depends-on-live-schema"],
    "why": "RenameIndex(old_fields=...) introspects the live schema; no such index exists: the migration will fail at deploy.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RenameIndex("big", new_name="big_qty_idx2", old_fields=("qty",)),
    ]
