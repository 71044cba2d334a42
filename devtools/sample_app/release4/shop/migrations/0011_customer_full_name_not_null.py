"""Rename step 2 of 5 (backfilled), 3/3: full_name NOT NULL, the CHECK dropped.

PostgreSQL 12+ sees that the CHECK validated by 0010 proves the column has no
NULL and skips SET NOT NULL's scan: the ACCESS EXCLUSIVE lock is momentary. The
old code still serving during the rollout (step 1's) fills full_name on every
write. The CHECK is redundant once the column is NOT NULL.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0010_validate_customer_full_name_check")]

    operations = [
        migrations.AlterField(
            model_name="customer",
            name="full_name",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.RemoveConstraint(model_name="customer", name="shop_customer_full_name_not_null"),
    ]
