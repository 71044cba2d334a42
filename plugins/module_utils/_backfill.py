# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Batched, resumable backfills (django_backfill): the logic, independent of Django and of the driver.

Used on both sides:
- by the module (argument validation, before anything runs);
- by ``_backfill_helper`` in the application's interpreter, next to which this file is shipped: the
  batch loop (``run_backfill``) drives a small database interface that the helper implements with
  Django's connection, and that the unit tests implement in memory.

Rules: stdlib only, Python 3.8 syntax (it runs in the application's interpreter).

How a batch works (SQL mode), in ONE transaction::

    SELECT max(k), count(*) FROM (SELECT key AS k FROM table
                                  WHERE key > last AND key <= max_key ORDER BY key LIMIT batch_size) b
    UPDATE table SET <set> WHERE key > last AND key <= upper AND (<where>)
    UPDATE safedeploy_backfill SET last_key = upper, rows_done = rows_done + n, ... WHERE name = .. AND last_key = last
    COMMIT

so the data and the progress commit together: a run killed at any point resumes after the last committed
batch, and a batch that was rolled back is done again, harmlessly, because ``where`` only matches rows that
still need the work. Keyset pagination over the key (no OFFSET): every batch starts where the last ended.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time

STATE_TABLE = "safedeploy_backfill"
STATE_LOCK = "safedeploy.backfill/state-table"  # advisory lock around CREATE TABLE IF NOT EXISTS
LOCK_PREFIX = "safedeploy.backfill/"  # advisory lock per backfill name: one run at a time
PROGRESS_INTERVAL = 1.0  # seconds between two progress lines (the first and last are always written)
LOCK_WAIT = 30.0  # seconds a run waits for another run of the same backfill to end (or a killed one to vanish)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_COMMAND = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?\s*$")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, None: 1e-3}
_NAME_MAX = 200

STATE_DDL = (
    "CREATE TABLE IF NOT EXISTS " + STATE_TABLE + " ("
    "name text PRIMARY KEY, "
    "table_name text NOT NULL, "
    "key_column text NOT NULL, "
    "mode text NOT NULL, "
    "definition text NOT NULL, "
    "definition_digest text NOT NULL, "
    "last_key bigint, "
    "max_key bigint, "
    "rows_done bigint NOT NULL DEFAULT 0, "
    "batches bigint NOT NULL DEFAULT 0, "
    "runs integer NOT NULL DEFAULT 0, "
    "started_at timestamptz NOT NULL DEFAULT now(), "
    "updated_at timestamptz NOT NULL DEFAULT now(), "
    "finished_at timestamptz, "
    "status text NOT NULL, "
    "last_error text)"
)
STATE_COLUMNS = (
    "name", "table_name", "key_column", "mode", "definition", "definition_digest", "last_key", "max_key",
    "rows_done", "batches", "runs", "started_at", "updated_at", "finished_at", "status", "last_error",
)
STATE_SELECT = "SELECT " + ", ".join(STATE_COLUMNS) + " FROM " + STATE_TABLE + " WHERE name = %s"
# (re)start: a new row, or the old one reset (restart, or a definition the caller accepted)
STATE_UPSERT = (
    "INSERT INTO " + STATE_TABLE + " (name, table_name, key_column, mode, definition, definition_digest, "
    "last_key, max_key, rows_done, batches, runs, started_at, updated_at, finished_at, status, last_error) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0, 0, 0, now(), now(), NULL, 'running', NULL) "
    "ON CONFLICT (name) DO UPDATE SET table_name = EXCLUDED.table_name, key_column = EXCLUDED.key_column, "
    "mode = EXCLUDED.mode, definition = EXCLUDED.definition, definition_digest = EXCLUDED.definition_digest, "
    "last_key = EXCLUDED.last_key, max_key = EXCLUDED.max_key, rows_done = 0, batches = 0, runs = 0, "
    "started_at = now(), updated_at = now(), finished_at = NULL, status = 'running', last_error = NULL"
)
STATE_RUN = (
    "UPDATE " + STATE_TABLE + " SET runs = runs + 1, status = 'running', last_error = NULL, updated_at = now() "
    "WHERE name = %s"
)
# the progress of one batch, in the batch's transaction; last_key = %s makes a concurrent mover visible
STATE_ADVANCE = (
    "UPDATE " + STATE_TABLE + " SET last_key = %s, rows_done = rows_done + %s, batches = batches + 1, "
    "updated_at = now() WHERE name = %s AND last_key = %s"
)
STATE_STATUS = (
    "UPDATE " + STATE_TABLE + " SET status = %s, last_error = %s, updated_at = now(), "
    "finished_at = CASE WHEN %s THEN now() ELSE finished_at END WHERE name = %s"
)


class BackfillError(Exception):
    """A failure with a kind (``error_kind``) and a message that says what to change."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class LockTimeout(Exception):
    """A batch gave up waiting for a lock (SQLSTATE 55P03): rolled back, retried."""


class StatementTimeout(Exception):
    """A batch ran longer than statement_timeout (SQLSTATE 57014): rolled back, not retried."""


class BatchFailed(Exception):
    """Any other error of a batch (the command raised, a constraint failed ...): rolled back."""


# -- arguments ------------------------------------------------------------------------------------


def duration_seconds(value) -> float | None:
    """Seconds of a PostgreSQL duration (V(5s), V(500ms), V(2min), V(0); a bare number is milliseconds);
    None when it is not one."""
    match = _DURATION.match(str(value))
    if not match:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def split_table(table: str) -> list[str] | None:
    parts = str(table or "").split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENT.match(p) for p in parts):
        return None
    return parts


def quote_ident(name: str) -> str:
    """A validated identifier (or schema.name), double-quoted: case is kept, nothing can break out."""
    parts = split_table(name)
    if parts is None:
        raise BackfillError("bad_identifier", f"{name!r} is not a plain SQL identifier")
    return ".".join('"' + p + '"' for p in parts)


def validate(params: dict) -> list[str]:
    """Everything wrong with the arguments, each message saying what to change (empty when fine)."""
    errors = []
    name = params.get("name")
    if not name or not str(name).strip():
        errors.append("name must be a non-empty text that identifies the backfill (its progress is stored under it)")
    elif len(str(name)) > _NAME_MAX or any(ord(c) < 32 for c in str(name)):
        errors.append(f"name must be at most {_NAME_MAX} printable characters")
    if split_table(params.get("table")) is None:
        errors.append(
            f"table must be a table name or schema.table made of letters, digits, _ and $ (at most 63 each), "
            f"for example shop_order or public.shop_order; got {params.get('table')!r}"
        )
    if not _IDENT.match(str(params.get("key") or "")):
        errors.append(f"key must be the name of the table's integer primary key column (e.g. id); "
                      f"got {params.get('key')!r}")
    if params.get("batch_size") is None or params["batch_size"] < 1:
        errors.append(f"batch_size must be 1 or more rows, e.g. 1000; got {params.get('batch_size')}")
    if params.get("pause") is None or params["pause"] < 0:
        errors.append(f"pause must be 0 or more seconds between batches, e.g. 0.1; got {params.get('pause')}")
    if params.get("max_runtime") is not None and params["max_runtime"] <= 0:
        errors.append(f"max_runtime must be a number of seconds above 0 (or left out: no limit); "
                      f"got {params['max_runtime']}")
    timeout = params.get("timeout")
    if params.get("max_runtime") is not None and timeout and params["max_runtime"] >= timeout:
        errors.append(f"max_runtime ({params['max_runtime']:g}s) must be below timeout ({timeout}s), which kills "
                      "the run: lower max_runtime or raise timeout")
    if params.get("lock_retries") is not None and params["lock_retries"] < 0:
        errors.append("lock_retries must be 0 (never retry a batch) or more")
    if params.get("retry_delay") is not None and params["retry_delay"] < 0:
        errors.append("retry_delay must be 0 or more seconds, e.g. 0.5")
    for option in ("statement_timeout", "lock_timeout", "count_timeout"):
        value = params.get(option)
        if value is not None and duration_seconds(value) is None:
            errors.append(f"{option} must be a PostgreSQL duration such as 5s, 500ms, 2min or 0; got {value!r}")
    set_sql, where_sql, command = params.get("set"), params.get("where"), params.get("command")
    if command is not None and (set_sql is not None or where_sql is not None):
        errors.append("give either set and where (an SQL UPDATE) or command (a management command), not both")
    elif command is None and set_sql is None:
        errors.append("give set and where (an SQL UPDATE per batch, e.g. set: 'display_name = name', "
                      "where: 'display_name IS NULL') or command (a management command run per key range)")
    elif command is None and (where_sql is None or not str(where_sql).strip()):
        errors.append("where is required with set: the condition that a row still needs the backfill (e.g. "
                      "'display_name IS NULL'), so that running a batch again changes nothing")
    if command is None and where_sql is not None and set_sql is None:
        errors.append("where goes with set: give set too (the assignment list of the UPDATE)")
    for option in ("set", "where"):
        value = params.get(option)
        if value is None:
            continue
        if not str(value).strip():
            errors.append(f"{option} must not be empty")
        elif ";" in str(value):
            errors.append(f"{option} must be one SQL fragment without ';' (it becomes part of one UPDATE "
                          f"statement); got {value!r}")
    if command is not None and not _COMMAND.match(str(command)):
        errors.append(f"command must be the name of a Django management command (e.g. backfill_display_names), "
                      f"without manage.py or arguments; got {command!r}")
    args = params.get("command_args") or []
    if args and command is None:
        errors.append("command_args goes with command")
    for arg in args:
        if str(arg).split("=", 1)[0] in ("--start", "--end"):
            errors.append("command_args must not contain --start or --end: the module passes them per key range")
            break
    return errors


def definition(params: dict) -> dict:
    """What the backfill does: changing any of it under the same name is refused (or needs restart)."""
    mode = "command" if params.get("command") is not None else "sql"
    spec = {"mode": mode, "table": params["table"], "key": params["key"]}
    if mode == "sql":
        spec.update(set=params["set"].strip(), where=params["where"].strip())
    else:
        spec.update(command=params["command"], command_args=[str(a) for a in params.get("command_args") or []])
    return spec


def definition_digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def describe_change(old: dict, new: dict) -> str:
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed) or "(same fields, other digest)"


# -- SQL ------------------------------------------------------------------------------------------


def _fragment(sql: str) -> str:
    """A user fragment inside a statement run with %s parameters: a literal % must be doubled."""
    return sql.strip().replace("%", "%%")


def bounds_sql(table: str, key: str) -> str:
    """Upper key and row count of the next batch (keyset: the batch_size next keys after last)."""
    t, k = quote_ident(table), quote_ident(key)
    return (f"SELECT max(b.k), count(*) FROM (SELECT {k} AS k FROM {t} WHERE {k} > %s AND {k} <= %s "
            f"ORDER BY {k} LIMIT %s) AS b")


def update_sql(table: str, key: str, set_sql: str, where_sql: str) -> str:
    t, k = quote_ident(table), quote_ident(key)
    return f"UPDATE {t} SET {_fragment(set_sql)} WHERE {k} > %s AND {k} <= %s AND ({_fragment(where_sql)})"


def count_sql(table: str, key: str, where_sql: str | None = None) -> str:
    """Rows left: in (last, max_key], and matching where in SQL mode."""
    t, k = quote_ident(table), quote_ident(key)
    condition = f" AND ({_fragment(where_sql)})" if where_sql else ""
    return f"SELECT count(*) FROM {t} WHERE {k} > %s AND {k} <= %s{condition}"


def range_sql(table: str, key: str) -> str:
    t, k = quote_ident(table), quote_ident(key)
    return f"SELECT min({k}), max({k}) FROM {t}"


def command_range(last: int, upper: int) -> tuple[int, int]:
    """The --start/--end of a command batch: rows with start <= key < end (start inclusive, end exclusive)."""
    return last + 1, upper + 1


# -- figures --------------------------------------------------------------------------------------


def fmt_duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def eta(rows_left, rate) -> float | None:
    if rows_left is None:
        return None
    if rows_left <= 0:
        return 0.0
    if not rate:
        return None
    return round(rows_left / rate, 1)


def backoff(retry_delay: float, attempt: int, rand=random.random) -> float:
    """Wait before retry ``attempt`` (1, 2, ...): min(30, retry_delay * 2**(attempt-1)) x [0.5, 1)."""
    return min(30.0, retry_delay * 2 ** (attempt - 1)) * (0.5 + rand() / 2)


def progress_line(name: str, stats: dict) -> str:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    left = stats.get("rows_left")
    left_text = "?" if left is None else ("~" if stats.get("rows_left_method") == "estimate" else "") + str(left)
    return (
        f"{now} backfill {name}: {stats.get('status')} batches {stats.get('batches_total')} "
        f"last_key {stats.get('last_key')}/{stats.get('max_key')} "
        f"rows done {stats.get('rows_done_total')} (this run {stats.get('rows_done')}) left {left_text} "
        f"{stats.get('rows_per_second')} rows/s ETA {fmt_duration(stats.get('eta_seconds'))} "
        f"retries {stats.get('retries')}"
    )


# -- the run --------------------------------------------------------------------------------------


def _iso(value):
    return value.isoformat() if hasattr(value, "isoformat") else value


def run_backfill(db, request: dict, *, clock=time.monotonic, sleep=time.sleep, log=None, rand=random.random) -> dict:
    """Run (or, in check mode, size) one backfill; return the reply (``ok`` true or false).

    ``db`` is the helper's interface to the database (see _backfill_helper.DjangoBackfillDB):
    describe(), state_table_exists(), read_state(name), key_range(), try_lock(), lock_holders(),
    ensure_state_table(), init_state(...), mark_running(name), count_left(last, max_key) -> (n, method),
    batch(name, last, max_key, batch_size) -> (upper, rows_in_range, rows_touched) or None when no row
    is left, set_status(name, status, error, finished).
    """
    started = clock()
    name = request["name"]
    spec = request["definition"]
    digest = definition_digest(spec)
    check_mode = bool(request.get("check_mode"))
    restart = bool(request.get("restart"))
    mode = spec["mode"]
    log = log or (lambda line: None)

    db.describe()
    state = db.read_state(name) if db.state_table_exists() else None
    if state is not None and state["definition_digest"] != digest and not restart:
        try:
            old = json.loads(state["definition"])
        except ValueError:
            old = {}
        raise BackfillError(
            "definition_changed",
            f"backfill '{name}' was started with another definition ({describe_change(old, spec)}). A backfill "
            f"name stands for one piece of work: use a new name for new work, or restart: true to start "
            f"'{name}' over from the first key with the new definition.",
        )
    fresh = state is None or restart

    if check_mode:
        if fresh:
            low, high = db.key_range()
            last = None if low is None else low - 1
            max_key = high
        else:
            last, max_key = state["last_key"], state["max_key"]
        finished = not fresh and state["status"] == "finished"
        would, method = (0, "count") if finished or max_key is None else db.count_left(last, max_key)
        return {
            "ok": True,
            "changed": bool(would),
            "check_mode": True,
            "status": "new" if state is None else state["status"],
            "would_restart": bool(restart and state is not None),
            "would_update": would,
            "rows_left": would,
            "rows_left_method": method,
            "last_key": last,
            "max_key": max_key,
            "rows_done": 0,
            "rows_done_total": 0 if fresh else state["rows_done"],
            "batches": 0,
            "batches_total": 0 if fresh else state["batches"],
            "retries": 0,
            "elapsed": round(clock() - started, 3),
            "rows_per_second": None,
            "eta_seconds": None,
            "longest_batch_seconds": None,
            "started_at": None if fresh else _iso(state["started_at"]),
            "finished_at": None if fresh else _iso(state["finished_at"]),
            "stopped_by": None,
        }

    if state is not None and state["status"] == "finished" and not restart:
        return _reply(state, changed=False, status="finished", stats=_RunStats(), elapsed=clock() - started,
                      rows_left=0, method="count")

    # one run of this backfill at a time; a killed run's session vanishes within seconds
    waited = 0.0
    while not db.try_lock():
        if waited >= request.get("lock_wait", LOCK_WAIT):
            holders = db.lock_holders()
            who = "; ".join(f"pid {h.get('pid')} ({h.get('application_name') or 'no application_name'})"
                            for h in holders) or "a session that ended meanwhile"
            raise BackfillError(
                "busy",
                f"another run of backfill '{name}' is in progress ({who}) after waiting {waited:g}s: let it "
                "finish (or stop it), then run again.",
            )
        sleep(0.5)
        waited += 0.5

    db.ensure_state_table()
    state = db.read_state(name)  # again, under the lock
    if state is not None and state["definition_digest"] != digest and not restart:
        raise BackfillError("definition_changed", f"backfill '{name}' changed its definition meanwhile")
    if state is None or restart:
        low, high = db.key_range()
        db.init_state(name, spec, digest, None if low is None else low - 1, high)
        state = db.read_state(name)
    elif state["status"] == "finished":  # finished meanwhile by another run
        return _reply(state, changed=False, status="finished", stats=_RunStats(), elapsed=clock() - started,
                      rows_left=0, method="count")
    db.mark_running(name)

    stats = _RunStats()
    last, max_key = state["last_key"], state["max_key"]
    if max_key is None or last is None:
        left, method = 0, "count"
    else:
        left, method = db.count_left(last, max_key)
    deadline = request.get("deadline")  # seconds from the start: max_runtime, or what timeout leaves
    stopped_by = None
    status = "running"
    last_line = None
    total = {"rows": state["rows_done"], "batches": state["batches"]}

    def figures(current_status):
        elapsed = clock() - started
        rate = round(stats.rows / elapsed, 1) if elapsed > 0 and stats.rows else 0.0
        rows_left = None if left is None else max(0, left - stats.rows)
        return {
            "status": current_status, "last_key": last, "max_key": max_key, "rows_done": stats.rows,
            "rows_done_total": total["rows"], "batches_total": total["batches"], "rows_left": rows_left,
            "rows_left_method": method, "rows_per_second": rate, "eta_seconds": eta(rows_left, rate),
            "retries": stats.retries,
        }

    log(progress_line(name, figures("started")))
    try:
        attempt = 0
        while True:
            if max_key is None or last is None or last >= max_key:
                status = "finished"
                break
            # every run does at least one batch, however long counting or waiting for the lock took
            if deadline is not None and stats.batches and clock() - started >= deadline:
                status, stopped_by = "paused", request.get("deadline_reason") or "max_runtime"
                break
            batch_started = clock()
            try:
                outcome = db.batch(name, last, max_key, request["batch_size"])
            except LockTimeout as exc:
                attempt += 1
                stats.retries += 1
                if attempt > request.get("lock_retries", 0):
                    raise BackfillError(
                        "lock_timeout",
                        f"the batch after key {last} waited longer than lock_timeout "
                        f"({request.get('lock_timeout')}) for locks held by other sessions, "
                        f"{attempt} time(s) in a row ({exc}). Nothing of that batch was kept; the next run "
                        "resumes there. Shorten the transactions that hold rows of "
                        f"{spec['table']} for long, lower batch_size, or raise lock_retries / lock_timeout.",
                    ) from None
                sleep(backoff(request.get("retry_delay", 0.5), attempt, rand))
                continue
            except StatementTimeout as exc:
                raise BackfillError(
                    "statement_timeout",
                    f"the batch after key {last} ran longer than statement_timeout "
                    f"({request.get('statement_timeout')}) and was rolled back ({exc}); the next run resumes "
                    f"there. Lower batch_size (now {request['batch_size']}), make the work cheaper (an index for "
                    "where), or raise statement_timeout.",
                ) from None
            except BatchFailed as exc:
                what = "the command" if mode == "command" else "the UPDATE"
                raise BackfillError(
                    "batch_failed",
                    f"{what} of the batch after key {last} failed and was rolled back: {exc}. Fix the cause; "
                    "the next run resumes there.",
                ) from None
            attempt = 0
            duration = clock() - batch_started
            if outcome is None:  # no key left in (last, max_key]
                last = max_key
                status = "finished"
                break
            upper, in_range, touched = outcome
            counted = touched if mode == "sql" else in_range
            stats.add(counted, duration)
            total["rows"] += counted
            total["batches"] += 1
            last = upper
            now = clock()
            if last_line is None or now - last_line >= request.get("progress_interval", PROGRESS_INTERVAL):
                log(progress_line(name, figures("running")))
                last_line = now
            if last < max_key and request.get("pause"):
                sleep(request["pause"])
    except BackfillError as exc:
        db.set_status(name, "failed", exc.message[:2000], False)
        reply = _reply(db.read_state(name) or state, changed=stats.rows > 0, status="failed", stats=stats,
                       elapsed=clock() - started, rows_left=None if left is None else max(0, left - stats.rows),
                       method=method)
        reply.update(ok=False, error_kind=exc.kind, message=exc.message)
        log(progress_line(name, dict(figures("failed"), rows_done_total=reply["rows_done_total"])))
        return reply
    db.set_status(name, status, None, status == "finished")
    final = db.read_state(name) or state
    rows_left = 0 if status == "finished" else (None if left is None else max(0, left - stats.rows))
    reply = _reply(final, changed=(stats.rows > 0 if mode == "sql" else stats.batches > 0), status=status,
                   stats=stats, elapsed=clock() - started, rows_left=rows_left, method=method)
    reply["stopped_by"] = stopped_by
    log(progress_line(name, reply))
    return reply


class _RunStats:
    def __init__(self):
        self.rows = 0
        self.batches = 0
        self.retries = 0
        self.longest = 0.0

    def add(self, rows: int, seconds: float) -> None:
        self.rows += rows
        self.batches += 1
        self.longest = max(self.longest, seconds)


def _reply(state: dict, *, changed: bool, status: str, stats: _RunStats, elapsed: float, rows_left, method) -> dict:
    rate = round(stats.rows / elapsed, 1) if elapsed > 0 and stats.rows else 0.0
    return {
        "ok": True,
        "changed": bool(changed),
        "check_mode": False,
        "status": status,
        "rows_done": stats.rows,
        "rows_done_total": state.get("rows_done", 0),
        "batches": stats.batches,
        "batches_total": state.get("batches", 0),
        "retries": stats.retries,
        "rows_left": rows_left,
        "rows_left_method": method,
        "elapsed": round(elapsed, 3),
        "rows_per_second": rate,
        "eta_seconds": eta(rows_left, rate) if status != "finished" else 0.0,
        "longest_batch_seconds": round(stats.longest, 3) if stats.batches else None,
        "last_key": state.get("last_key"),
        "max_key": state.get("max_key"),
        "runs": state.get("runs"),
        "started_at": _iso(state.get("started_at")),
        "finished_at": _iso(state.get("finished_at")),
        "stopped_by": None,
    }
