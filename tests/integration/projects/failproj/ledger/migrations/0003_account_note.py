from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("ledger", "0002_entries")]
    operations = [migrations.AddField("account", "note", models.TextField(null=True))]
