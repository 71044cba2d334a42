"""GET /healthz: is the database reachable, and is its schema what this code expects?

The migration graph on disk never changes while a process runs, so it is built
once per process (MigrationLoader without a connection reads only the files).
Each request then costs one small query: the applied set from django_migrations.
"""

import threading
import time

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.http import JsonResponse
from django.views.decorators.http import require_safe

_lock = threading.Lock()
_expected: dict[tuple[str, str], tuple[tuple[str, str], ...]] | None = None


def expected_migrations() -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
    """Every migration node of this code → the migrations it replaces (squashes)."""
    global _expected
    with _lock:
        if _expected is None:
            loader = MigrationLoader(None, ignore_no_migrations=True)
            _expected = {
                key: tuple(loader.replacements[key].replaces) if key in loader.replacements else ()
                for key in loader.graph.nodes
            }
    return _expected


def pending_migrations(applied: set[tuple[str, str]]) -> list[str]:
    pending = []
    for key, replaces in expected_migrations().items():
        if key in applied or (replaces and all(r in applied for r in replaces)):
            continue
        pending.append(f"{key[0]}.{key[1]}")
    return sorted(pending)


@require_safe
def healthz(request):
    started = time.monotonic()
    body = {"status": "ok", "version": settings.RELEASE_VERSION}
    try:
        recorder = MigrationRecorder(connection)
        applied = set(recorder.migration_qs.values_list("app", "name"))
    except DatabaseError as exc:
        if not _is_missing_table(exc):
            body.update(status="error", database=f"unavailable: {type(exc).__name__}", pending_migrations=None)
            return JsonResponse(body, status=503)
        applied = set()  # a fresh database: nothing migrated yet
    pending = pending_migrations(applied)
    body.update(
        pending_migrations=len(pending),
        pending=pending[:20],
        database="ok",
        elapsed_ms=round((time.monotonic() - started) * 1000, 1),
    )
    return JsonResponse(body)


def _is_missing_table(exc: DatabaseError) -> bool:
    # psycopg reports SQLSTATE 42P01 (undefined_table) before the first migrate
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) == "42P01"
