"""A pre migration written after the contract one: it must wait for phase post."""

from django.db import migrations, models


class Migration(migrations.Migration):
    safedeploy_phase = "pre"
    dependencies = [("phases", "0003_remove_widget_legacy")]
    operations = [
        migrations.AddField(model_name="widget", name="size", field=models.IntegerField(default=0)),
    ]
