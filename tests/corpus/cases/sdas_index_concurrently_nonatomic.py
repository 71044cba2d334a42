# ruff: noqa: E501  (one-case corpus migration: its SQL and docstring stay on one line)
"""Corpus case sdas_index_concurrently_nonatomic: SeparateDatabaseAndState: state AddIndex, database CREATE INDEX CONCURRENTLY, atomic=False."""

from django.db import migrations, models

CASE = {
    "risk": "low",
    "rules": ["non-atomic-migration"],
    "why": "SeparateDatabaseAndState: state AddIndex, database CREATE INDEX CONCURRENTLY, atomic=False.",
}


class Migration(migrations.Migration):
    atomic = False
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex("big", models.Index(fields=["qty"], name="big_qty_idx"))],
            database_operations=[migrations.RunSQL(
                "CREATE INDEX CONCURRENTLY big_qty_idx ON corpus_big (qty)", "DROP INDEX CONCURRENTLY big_qty_idx")],
        ),
    ]
