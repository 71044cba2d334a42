"""Atomic: DDL on fault_item (ACCESS EXCLUSIVE), then a sleep of FAULTPROJ_SLEEP seconds (default 0).

The tests use the sleep to overlap deploys, to kill a runner mid-migration and
to hold the table lock; the ALTER is what a blocking transaction makes wait.
"""

import os

from django.db import migrations, models

SLEEP = float(os.environ.get("FAULTPROJ_SLEEP", "0"))


class Migration(migrations.Migration):
    dependencies = [("fault", "0001_initial")]
    operations = [
        migrations.AddField("item", "note", models.TextField(null=True)),
        migrations.RunSQL(f"SELECT pg_sleep({SLEEP})", reverse_sql=f"SELECT pg_sleep({SLEEP})"),
    ]
