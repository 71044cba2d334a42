"""Low risk: NOT NULL with a database default (db_default), not a Django-only default.

PostgreSQL fills the constant in for rows and INSERTs that do not name the
column, so release 1's code keeps creating orders while release 2 rolls out.
(A plain ``default="web"`` would be dropped from the table after the ALTER and
release 1's INSERTs would fail with a NOT NULL violation.)
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_description")]

    operations = [
        migrations.AddField(
            model_name="order",
            name="channel",
            field=models.CharField(
                choices=[("web", "Web shop"), ("app", "Mobile app"), ("phone", "Phone")],
                db_default="web",
                max_length=16,
            ),
        ),
    ]
