"""Corpus case will_fail_nulls_big: NOT NULL on a column that holds NULLs (pre-checks find them)."""

from django.db import migrations, models

CASE = {
    "risk": "high",
    "rules": ["alter-field-set-not-null", "will-fail-nulls"],
    "why": "corpus_big.note is NULL on every row: SET NOT NULL would fail at deploy after a full scan.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField("big", "note", models.TextField()),
    ]
