import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("fault", "0003_tag")]
    operations = [
        migrations.AddField(
            "item",
            "tag",
            models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, to="fault.tag"),
        ),
    ]
