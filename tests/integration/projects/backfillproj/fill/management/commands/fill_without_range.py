"""A command that does not take --start/--end: django_backfill must refuse it before any batch."""

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    def handle(self, *args, **options):
        raise AssertionError("must never run")
