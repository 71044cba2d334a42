"""Corpus case alter_model_table_big: db_table change renames the table."""

from django.db import migrations

CASE = {
    "risk": "high",
    "rules": ["alter-model-table"],
    "why": "db_table change renames the table.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterModelTable("big", "corpus_big_v2"),
    ]
