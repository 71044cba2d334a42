"""Medium risk: CREATE INDEX on an existing table without CONCURRENTLY.

It blocks writes to shop_order while the index builds: quick on the sandbox's
small table, a stall on a large one (the planner should say so).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0005_orderevent")]

    operations = [
        migrations.AddIndex(
            model_name="order",
            index=models.Index(fields=["created_at"], name="shop_order_created_idx"),
        ),
    ]
