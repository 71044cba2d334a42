# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""django_backfill's helper: runs in the *application's* interpreter, next to its Django.

The module writes this file, ``_backfill`` (the logic) and ``_django_helper`` (Django setup, connection,
errors, the JSON protocol, dying with the module) into one private temporary directory and runs
``python <dir>/_backfill_helper.py`` with cwd = the project; the request comes on stdin, the reply goes
to stdout, exactly as for the other Django modules (see ``_django_runner``).

What this file adds: the database interface that ``_backfill.run_backfill`` drives, on Django's
connection (so the application's DATABASES, driver and OPTIONS are used), and the management command
mode, in which each batch calls the command inside the batch's transaction.

stdlib only at import time, Python 3.8 syntax.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys

try:  # shipped next to us (the application's interpreter)
    import _backfill  # type: ignore[import-not-found]
    import _django_helper  # type: ignore[import-not-found]
except ImportError:  # imported by the module or the unit tests
    from ansible_collections.safedeploy.django.plugins.module_utils import _backfill, _django_helper

_LOCK_NOT_AVAILABLE = "55P03"
_QUERY_CANCELED = "57014"
_INTEGER_TYPES = ("smallint", "integer", "bigint")


class DjangoBackfillDB:
    """The interface run_backfill drives, on a Django connection (autocommit between batches)."""

    def __init__(self, connection, request: dict):
        self.connection = connection
        self.alias = connection.alias
        spec = request["definition"]
        self.spec = spec
        self.table = spec["table"]
        self.key = spec["key"]
        self.mode = spec["mode"]
        self.count_timeout = request.get("count_timeout") or "30s"
        self.statement_timeout = request.get("statement_timeout")
        database = connection.settings_dict.get("NAME") or connection.connection.info.dbname
        self.lock_key = _django_helper.lock_key(database, _backfill.LOCK_PREFIX + request["name"])
        self.state_lock_key = _django_helper.lock_key(database, _backfill.STATE_LOCK)
        self.locked = False
        self.command = None
        self._bounds = _backfill.bounds_sql(self.table, self.key)
        if self.mode == "sql":
            self._update = _backfill.update_sql(self.table, self.key, spec["set"], spec["where"])
            self._count = _backfill.count_sql(self.table, self.key, spec["where"])
        else:
            self._count = _backfill.count_sql(self.table, self.key)

    # -- reading

    def _one(self, sql: str, params=()):
        with self.connection.cursor() as cursor:
            cursor.execute(sql, list(params))
            return cursor.fetchone()

    def describe(self) -> None:
        """The table exists, the key is one of its integer columns; a command accepts --start/--end."""
        relation = _backfill.quote_ident(self.table)
        found = self._one("SELECT to_regclass(%s)::text", [relation])[0]
        if found is None:
            raise _backfill.BackfillError(
                "bad_table",
                f"table {self.table} does not exist in database '{self.connection.settings_dict.get('NAME')}' "
                "(search_path of the connection): fix table (schema.table if it is not on the search_path).",
            )
        row = self._one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attname = %s AND attnum > 0 AND NOT attisdropped",
            [relation, self.key],
        )
        if row is None:
            raise _backfill.BackfillError(
                "bad_key", f"table {self.table} has no column {self.key}: set key to its integer primary key column."
            )
        if row[0] not in _INTEGER_TYPES:
            raise _backfill.BackfillError(
                "bad_key",
                f"column {self.table}.{self.key} is {row[0]}; the backfill walks integer keys (smallint, integer, "
                "bigint): set key to an integer column with an index (the primary key).",
            )
        if self.mode == "command":
            self.command = _load_command(self.spec["command"])

    def state_table_exists(self) -> bool:
        return self._one("SELECT to_regclass(%s) IS NOT NULL", [_backfill.STATE_TABLE])[0]

    def read_state(self, name: str) -> dict | None:
        row = self._one(_backfill.STATE_SELECT, [name])
        return None if row is None else {column: row[i] for i, column in enumerate(_backfill.STATE_COLUMNS)}

    def key_range(self):
        low, high = self._one(_backfill.range_sql(self.table, self.key))
        return low, high

    def count_left(self, last: int, max_key: int):
        """Rows left in (last, max_key] (matching where in SQL mode), bounded by count_timeout; past it,
        an estimate from the planner's row count and the share of the key range left."""
        from django.db import DatabaseError, transaction

        try:
            with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(self.count_timeout)])
                cursor.execute(self._count, [last, max_key])
                return int(cursor.fetchone()[0]), "count"
        except DatabaseError as exc:
            if _django_helper._sqlstate(exc) != _QUERY_CANCELED:
                raise
        low, high = self.key_range()
        estimate = self._one("SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = %s::regclass",
                             [_backfill.quote_ident(self.table)])[0] or 0
        if low is None or high is None or high <= low:
            return int(estimate), "estimate"
        share = max(0.0, min(1.0, (max_key - last) / float(high - low + 1)))
        return int(estimate * share), "estimate"

    # -- the lock

    def try_lock(self) -> bool:
        self.locked = bool(self._one("SELECT pg_try_advisory_lock(%s)", [self.lock_key])[0])
        return self.locked

    def lock_holders(self) -> list:
        return _django_helper._lock_holders(self.connection, self.lock_key)

    def unlock(self) -> None:
        if self.locked:
            with contextlib.suppress(Exception):
                self._one("SELECT pg_advisory_unlock(%s)", [self.lock_key])
            self.locked = False

    # -- writing

    def ensure_state_table(self) -> None:
        from django.db import transaction

        if self.state_table_exists():
            return
        with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
            # two backfills of other names may create it at once: CREATE TABLE IF NOT EXISTS can still collide
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [self.state_lock_key])
            cursor.execute(_backfill.STATE_DDL)

    def init_state(self, name: str, spec: dict, digest: str, last, max_key) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(
                _backfill.STATE_UPSERT,
                [name, spec["table"], spec["key"], spec["mode"], json.dumps(spec, sort_keys=True), digest, last,
                 max_key],
            )

    def mark_running(self, name: str) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(_backfill.STATE_RUN, [name])

    def set_status(self, name: str, status: str, error, finished: bool) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(_backfill.STATE_STATUS, [status, error, bool(finished), name])

    def batch(self, name: str, last: int, max_key: int, batch_size: int):
        """One batch and its progress, in one transaction. None when no key is left in (last, max_key]."""
        from django.db import DatabaseError, transaction

        try:
            with transaction.atomic(using=self.alias):
                with self.connection.cursor() as cursor:
                    cursor.execute(self._bounds, [last, max_key, batch_size])
                    upper, in_range = cursor.fetchone()
                    if upper is None:
                        return None
                    if self.mode == "sql":
                        cursor.execute(self._update, [last, upper])
                        touched = max(0, cursor.rowcount)
                if self.mode == "command":
                    start, end = _backfill.command_range(last, upper)
                    _run_command(self.command, self.spec["command_args"], start, end)
                    touched = int(in_range)
                with self.connection.cursor() as cursor:
                    cursor.execute(_backfill.STATE_ADVANCE, [upper, touched, name, last])
                    if cursor.rowcount != 1:
                        raise _backfill.BackfillError(
                            "state_moved",
                            f"the progress of backfill '{name}' is no longer at key {last}: another run moved it. "
                            "Nothing of this batch was kept; run again.",
                        )
                return int(upper), int(in_range), int(touched)
        except _backfill.BackfillError:
            raise
        except DatabaseError as exc:
            code = _django_helper._sqlstate(exc)
            if code == _LOCK_NOT_AVAILABLE:
                raise _backfill.LockTimeout(_django_helper._first_line(str(exc))) from exc
            if code == _QUERY_CANCELED:
                raise _backfill.StatementTimeout(_django_helper._first_line(str(exc))) from exc
            raise _backfill.BatchFailed(f"{type(exc).__name__}: {_django_helper._first_line(str(exc))}") from exc
        except Exception as exc:  # noqa: BLE001 - the command's own errors: rolled back, reported
            raise _backfill.BatchFailed(f"{type(exc).__name__}: {_django_helper._first_line(str(exc))}") from exc


def _load_command(name: str):
    """The management command, checked to accept --start and --end."""
    from django.core.management import get_commands, load_command_class

    app = get_commands().get(name)
    if app is None:
        raise _backfill.BackfillError(
            "bad_command",
            f"no management command '{name}' in this project (INSTALLED_APPS of the settings): fix command.",
        )
    command = app if not isinstance(app, str) else load_command_class(app, name)
    parser = command.create_parser("manage.py", name)
    dests = {action.dest for action in parser._actions}
    missing = [option for option in ("start", "end") if option not in dests]
    if missing:
        raise _backfill.BackfillError(
            "bad_command",
            f"management command '{name}' does not accept {' and '.join('--' + m for m in missing)}: add "
            "parser.add_argument('--start', type=int) and parser.add_argument('--end', type=int) to its "
            "add_arguments() and handle the rows with start <= key < end.",
        )
    return command


def _run_command(command, args: list, start: int, end: int) -> None:
    from django.core.management import call_command

    out = io.StringIO()
    call_command(command, *[str(a) for a in args], "--start", str(start), "--end", str(end), stdout=out, stderr=out)
    text = out.getvalue()
    if text:
        sys.stderr.write(text[-2000:])


def _progress_writer(path: str | None):
    """Append lines to the progress log (0600, never through a symlink); a failure to write is not fatal."""
    if not path:
        return None, None
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    secrets = _django_helper._known_secrets()

    def write(line: str) -> None:
        with contextlib.suppress(OSError):
            os.write(fd, (_django_helper.scrub(line, secrets) + "\n").encode("utf-8"))

    return fd, write


def action_backfill(request: dict) -> dict:
    from django.db import DatabaseError

    alias = request.get("database") or "default"
    connection = _django_helper._connect(alias)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('application_name', %s, false)",
                [f"safedeploy.backfill {request['name']} {socket.gethostname()} pid {os.getpid()}"[:63]],
            )
    except DatabaseError as exc:
        raise _django_helper._classify_db_error(exc, connection) from exc
    _django_helper._set_session_guards(connection)
    _django_helper._set_timeouts(connection, request)
    target = _django_helper._fingerprint(connection)
    db = DjangoBackfillDB(connection, request)
    fd, log = (None, None) if request.get("check_mode") else _progress_writer(request.get("progress_log"))
    try:
        reply = _backfill.run_backfill(db, request, log=log)
    except _backfill.BackfillError as exc:
        reply = {"ok": False, "error_kind": exc.kind, "message": exc.message}
    finally:
        db.unlock()
        if fd is not None:
            os.close(fd)
    reply["target"] = target
    return reply


# -- the module side ------------------------------------------------------------------------------------


def _source(module) -> str:
    loader = getattr(module, "__loader__", None)
    with contextlib.suppress(Exception):
        text = loader.get_source(module.__name__) if loader is not None else None
        if text:
            return text
    import inspect

    return inspect.getsource(module)


def run(params: dict, payload: dict, *, which) -> dict:
    """Run this helper in the application's interpreter, through _django_runner.invoke_helper (module side).

    invoke_helper writes _django_helper to a file and runs it; the backfill needs two more files next to it,
    so the three go into a private directory and the command line is pointed at this file (which imports
    both). Raises _django_runner.HelperFailure like invoke_helper.
    """
    import shutil
    import subprocess
    import tempfile

    from ansible_collections.safedeploy.django.plugins.module_utils import _django_runner

    directory = tempfile.mkdtemp(prefix="safedeploy_backfill_")  # mode 0700
    try:
        sources = {
            "_django_helper.py": _django_runner.helper_source(),
            "_backfill.py": _source(_backfill),
            "_backfill_helper.py": _source(sys.modules[__name__]),
        }
        for filename, text in sources.items():
            fd = os.open(os.path.join(directory, filename), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
        entry = os.path.join(directory, "_backfill_helper.py")

        def popen(argv, **kwargs):
            return subprocess.Popen([argv[0], "-B", entry], **kwargs)

        return _django_runner.invoke_helper(params, "backfill", payload, which=which, popen=popen)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    _django_helper.ACTIONS["backfill"] = action_backfill
    return _django_helper.main()


if __name__ == "__main__":
    raise SystemExit(main())
