"""Rename step 2 of 5 (backfilled), 2/3: VALIDATE the CHECK that 0009 added NOT VALID.

VALIDATE CONSTRAINT scans the table under SHARE UPDATE EXCLUSIVE only: reads and
writes go on. In a migration of its own (its own transaction), so that 0009's
ACCESS EXCLUSIVE lock is not held during the scan. It fails if the backfill left
a NULL: the deploy then stops before the rollout, with the old code serving.
"""

from django.contrib.postgres.operations import ValidateConstraint
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0009_customer_full_name_check")]

    operations = [
        ValidateConstraint(model_name="customer", name="shop_customer_full_name_not_null"),
    ]
