"""Corpus case dml_with_ddl_runsql_mid: ADD COLUMN then UPDATE of 50k rows in one transaction."""

from django.db import migrations, models

CASE = {
    "risk": "medium",
    "rules": ["add-nullable-column", "raw-sql-data-change", "dml-with-ddl"],
    "why": "ADD COLUMN then UPDATE of 50k rows in one transaction.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("mid", "extra", models.CharField(max_length=30, null=True)),
        migrations.RunSQL("UPDATE corpus_mid SET extra = 'x'", 'SELECT 1'),
    ]
