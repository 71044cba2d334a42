from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Entry",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100)),
                ("display_name", models.CharField(max_length=100, null=True)),
                ("counter", models.IntegerField(default=0)),
            ],
            options={"db_table": "fill_entry"},
        ),
    ]
