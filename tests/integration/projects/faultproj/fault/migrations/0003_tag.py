"""Atomic: creates fault_tag, then fails on purpose when FAULTPROJ_FAIL_0003=1 (so nothing of it stays)."""

import os

from django.db import migrations, models

FAIL = os.environ.get("FAULTPROJ_FAIL_0003") == "1"
CHECK = (
    "DO $$ BEGIN RAISE EXCEPTION 'faultproj: 0003 fails on purpose (FAULTPROJ_FAIL_0003=1)'; END $$"
    if FAIL
    else "SELECT 1"
)


class Migration(migrations.Migration):
    dependencies = [("fault", "0002_item_note")]
    operations = [
        migrations.CreateModel(
            name="Tag",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("label", models.CharField(max_length=30)),
            ],
        ),
        migrations.RunSQL(CHECK, reverse_sql=migrations.RunSQL.noop),
    ]
