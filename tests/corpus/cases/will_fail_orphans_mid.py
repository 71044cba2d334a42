"""Corpus case will_fail_orphans_mid: an integer column becomes a foreign key to an empty table."""

from django.db import migrations, models

CASE = {
    "risk": "medium",
    "rules": ["add-constraint-validating", "will-fail-orphans"],
    "why": "every corpus_mid.qty points at a legacy row that does not exist: the foreign key fails to validate.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AlterField(
            "mid", "qty", models.ForeignKey("legacy", db_column="qty", on_delete=models.CASCADE, null=True)
        ),
    ]
