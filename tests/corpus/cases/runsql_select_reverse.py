"""Corpus case runsql_select_reverse: Harmless RunSQL with reverse."""

from django.db import migrations

CASE = {
    "risk": "low",
    "rules": ["catalog-change"],
    "why": "Harmless RunSQL with reverse.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.RunSQL("COMMENT ON TABLE corpus_big IS 'orders'", 'COMMENT ON TABLE corpus_big IS NULL'),
    ]
