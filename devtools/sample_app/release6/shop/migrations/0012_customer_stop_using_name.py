"""Rename step 4 of 5 (stop using name): the old column nullable, then out of Django's state.

Pre-deploy, while step 3's code (which writes both columns) still serves:
DROP NOT NULL changes the catalog only, and lets this release's INSERTs, which
no longer name the column, succeed. The column stays in the table (state-only
removal) until step 5 drops it, so rolling back to step 3 needs nothing.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0011_customer_full_name_not_null")]

    operations = [
        migrations.AlterField(
            model_name="customer",
            name="name",
            field=models.CharField(blank=True, max_length=200, null=True),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.RemoveField(model_name="customer", name="name")],
        ),
    ]
