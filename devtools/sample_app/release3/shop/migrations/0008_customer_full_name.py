"""Rename step 1 of 5 (expand): the new column, nullable. Low risk (add-nullable-column).

ADD COLUMN ... NULL changes the catalog only. 2.0.0's code, still serving during
the rollout, does not know the column: its INSERTs leave it NULL, and the
backfill after the rollout fills those rows.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0007_backfill_descriptions")]

    operations = [
        migrations.AddField(
            model_name="customer",
            name="full_name",
            field=models.CharField(blank=True, max_length=200, null=True),
        ),
    ]
