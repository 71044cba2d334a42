"""Not atomic, and fails in its second operation: the first one stays applied."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("ledger", "0001_initial")]
    operations = [
        migrations.CreateModel(
            name="Entry",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("amount", models.IntegerField()),
                ("account", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to="ledger.account")),
            ],
        ),
        migrations.RunSQL("SELECT 1 / 0", reverse_sql=migrations.RunSQL.noop),
    ]
