"""Corpus case add_db_default_now_big: now() is stable: no rewrite."""

from django.db import migrations, models
from django.db.models.functions import Now

CASE = {
    "risk": "low",
    "rules": ["add-column-db-default"],
    "why": "now() is stable: no rewrite.",
}


class Migration(migrations.Migration):
    operations = [
        migrations.AddField("big", "seen", models.DateTimeField(db_default=Now())),
    ]
