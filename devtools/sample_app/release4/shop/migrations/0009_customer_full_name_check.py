"""Rename step 2 of 5 (backfilled), 1/3: CHECK (full_name IS NOT NULL) NOT VALID.

From now on every new or updated row is checked (every running release fills
full_name); the existing rows are not scanned, so the ACCESS EXCLUSIVE lock that
ALTER TABLE takes is momentary. 0010 validates it in a transaction of its own.
"""

from django.contrib.postgres.operations import AddConstraintNotValid
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0008_customer_full_name")]

    operations = [
        AddConstraintNotValid(
            model_name="customer",
            constraint=models.CheckConstraint(
                condition=models.Q(full_name__isnull=False), name="shop_customer_full_name_not_null"
            ),
        ),
    ]
