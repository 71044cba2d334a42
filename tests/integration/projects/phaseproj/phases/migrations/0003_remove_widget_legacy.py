"""Contract: the old code still reads legacy, so it is dropped after the rollout."""

from django.db import migrations


class Migration(migrations.Migration):
    safedeploy_phase = "post"
    dependencies = [("phases", "0002_widget_color")]
    operations = [
        migrations.RemoveField(model_name="widget", name="legacy"),
    ]
