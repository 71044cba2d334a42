from django.db import models


class Entry(models.Model):
    """A table to backfill: display_name (from name) and counter (how many times a row was done)."""

    name = models.CharField(max_length=100)
    display_name = models.CharField(max_length=100, null=True)
    counter = models.IntegerField(default=0)

    class Meta:
        db_table = "fill_entry"
