from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("slow", "0001_initial")]
    operations = [
        migrations.RunSQL("INSERT INTO slow_thing (name) VALUES ('seed')", reverse_sql="DELETE FROM slow_thing"),
    ]
