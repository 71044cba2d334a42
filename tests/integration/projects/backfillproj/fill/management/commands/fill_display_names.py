"""Backfill command for django_backfill's command mode: handles the rows with start <= id < end."""

from django.core.management.base import BaseCommand, CommandError
from django.db.models import F, Value
from django.db.models.functions import Upper

from fill.models import Entry


class Command(BaseCommand):
    help = "Fill display_name = UPPER(name) and count the visit, for start <= id < end."

    def add_arguments(self, parser):
        parser.add_argument("--start", type=int, required=True)
        parser.add_argument("--end", type=int, required=True)
        parser.add_argument("--prefix", default="")
        parser.add_argument("--fail-at", type=int, default=None, help="raise when this id is in the range")

    def handle(self, *args, start, end, prefix, fail_at, **options):
        if fail_at is not None and start <= fail_at < end:
            raise CommandError(f"refusing the range holding id {fail_at}")
        rows = Entry.objects.filter(id__gte=start, id__lt=end)
        if prefix:
            from django.db.models.functions import Concat

            done = rows.update(display_name=Concat(Value(prefix), Upper("name")), counter=F("counter") + 1)
        else:
            done = rows.update(display_name=Upper("name"), counter=F("counter") + 1)
        self.stdout.write(f"{done} rows in [{start}, {end})")
