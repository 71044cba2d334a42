"""_backfill: argument validation, SQL, and the batch loop against an in-memory database."""

from __future__ import annotations

import json

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils import _backfill

SQL = {"name": "fill", "table": "shop_order", "key": "id", "set": "display_name = name",
       "where": "display_name IS NULL", "command": None, "command_args": [], "batch_size": 1000, "pause": 0.1,
       "max_runtime": None, "timeout": 3600, "lock_retries": 5, "retry_delay": 0.5, "statement_timeout": "5s",
       "lock_timeout": "1s", "count_timeout": "30s"}


def params(**changes):
    return dict(SQL, **changes)


# -- validation -----------------------------------------------------------------------------------


def test_valid_sql_and_command_arguments_pass():
    assert _backfill.validate(params()) == []
    assert _backfill.validate(params(set=None, where=None, command="fill_names", command_args=["--x", "1"])) == []
    assert _backfill.validate(params(table="public.shop_order", key="order_id")) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"batch_size": 0}, "batch_size must be 1 or more rows"),
        ({"pause": -1}, "pause must be 0 or more seconds"),
        ({"max_runtime": 0}, "max_runtime must be a number of seconds above 0"),
        ({"max_runtime": 4000}, "must be below timeout"),
        ({"lock_retries": -1}, "lock_retries must be 0"),
        ({"retry_delay": -0.1}, "retry_delay must be 0 or more"),
        ({"statement_timeout": "five seconds"}, "statement_timeout must be a PostgreSQL duration"),
        ({"lock_timeout": "1 sec"}, "lock_timeout must be a PostgreSQL duration"),
        ({"table": "shop_order; DROP TABLE x"}, "table must be a table name"),
        ({"table": 'a"b'}, "table must be a table name"),
        ({"table": "a.b.c"}, "table must be a table name"),
        ({"key": "id desc"}, "key must be the name"),
        ({"name": " "}, "name must be a non-empty text"),
        ({"name": "x\ny"}, "printable"),
        ({"where": None}, "where is required with set"),
        ({"set": None}, "where goes with set"),
        ({"set": None, "where": None}, "give set and where"),
        ({"command": "fill"}, "not both"),
        ({"set": "a = 1; DROP TABLE t"}, "set must be one SQL fragment without ';'"),
        ({"where": "a IS NULL; DELETE FROM t"}, "where must be one SQL fragment without ';'"),
        ({"set": "  "}, "set must not be empty"),
        ({"command_args": ["--x"]}, "command_args goes with command"),
        ({"set": None, "where": None, "command": "manage.py fill"}, "command must be the name"),
        ({"set": None, "where": None, "command": "fill", "command_args": ["--start=3"]}, "must not contain --start"),
    ],
)
def test_each_bad_argument_says_what_to_change(changes, expected):
    errors = _backfill.validate(params(**changes))
    assert any(expected in e for e in errors), errors


def test_durations():
    assert _backfill.duration_seconds("5s") == 5.0
    assert _backfill.duration_seconds("500ms") == 0.5
    assert _backfill.duration_seconds("2min") == 120.0
    assert _backfill.duration_seconds("0") == 0.0
    assert _backfill.duration_seconds("250") == 0.25  # PostgreSQL: a bare number is milliseconds
    assert _backfill.duration_seconds("5 parsecs") is None


# -- definition and SQL ----------------------------------------------------------------------------


def test_the_definition_covers_the_work_not_the_pace():
    base = _backfill.definition_digest(_backfill.definition(params()))
    assert _backfill.definition_digest(_backfill.definition(params(batch_size=5, pause=3))) == base
    assert _backfill.definition_digest(_backfill.definition(params(where="display_name = ''"))) != base
    assert _backfill.definition_digest(_backfill.definition(params(table="other"))) != base
    command = _backfill.definition(params(set=None, where=None, command="fill", command_args=["--a"]))
    assert command == {"mode": "command", "table": "shop_order", "key": "id", "command": "fill",
                       "command_args": ["--a"]}
    other = dict(command, command_args=["--b"])
    assert _backfill.definition_digest(command) != _backfill.definition_digest(other)
    assert "command_args: ['--a'] -> ['--b']" in _backfill.describe_change(command, other)


def test_identifiers_are_quoted_and_fragments_escaped_for_parameters():
    sql = _backfill.update_sql("public.Shop", "id", "note = 'a%'", "note NOT LIKE '%x'")
    assert sql == ('UPDATE "public"."Shop" SET note = \'a%%\' WHERE "id" > %s AND "id" <= %s '
                   "AND (note NOT LIKE '%%x')")
    assert "ORDER BY \"id\" LIMIT %s" in _backfill.bounds_sql("shop", "id")
    assert "OFFSET" not in _backfill.bounds_sql("shop", "id")
    assert _backfill.count_sql("shop", "id") == 'SELECT count(*) FROM "shop" WHERE "id" > %s AND "id" <= %s'
    with pytest.raises(_backfill.BackfillError):
        _backfill.quote_ident('x"; DROP TABLE y; --')


def test_command_ranges_are_start_inclusive_end_exclusive():
    # the batch (last, upper] = rows last+1 .. upper
    assert _backfill.command_range(0, 1000) == (1, 1001)


def test_figures():
    assert _backfill.eta(1000, 100.0) == 10.0
    assert _backfill.eta(0, 0) == 0.0
    assert _backfill.eta(10, 0) is None
    assert _backfill.eta(None, 5) is None
    assert _backfill.fmt_duration(3725) == "1h02m05s"
    assert _backfill.fmt_duration(65) == "1m05s"
    assert _backfill.fmt_duration(None) == "?"
    assert _backfill.backoff(0.5, 1, rand=lambda: 0.0) == 0.25
    assert _backfill.backoff(0.5, 3, rand=lambda: 1.0) == 2.0
    assert _backfill.backoff(10, 9, rand=lambda: 1.0) == 30.0


# -- the batch loop, against an in-memory table ----------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


class FakeDB:
    """A table of keys -> done flag, and a state row, with the semantics of DjangoBackfillDB."""

    def __init__(self, keys, clock, *, batch_seconds=0.01, mode="sql"):
        self.rows = {k: False for k in keys}
        self.clock = clock
        self.batch_seconds = batch_seconds
        self.mode = mode
        self.table_exists = False
        self.state = None
        self.locked_by_other = 0
        self.lock_failures = {}  # last key -> how many times the batch after it times out
        self.statement_timeout_at = None
        self.fail_at = None
        self.calls = []

    # reading
    def describe(self):
        self.calls.append("describe")

    def state_table_exists(self):
        return self.table_exists

    def read_state(self, name):
        return dict(self.state) if self.state and self.state["name"] == name else None

    def key_range(self):
        return (min(self.rows), max(self.rows)) if self.rows else (None, None)

    def count_left(self, last, max_key):
        if self.mode == "sql":
            return sum(1 for k, done in self.rows.items() if last < k <= max_key and not done), "count"
        return sum(1 for k in self.rows if last < k <= max_key), "count"

    def try_lock(self):
        if self.locked_by_other:
            self.locked_by_other -= 1
            return False
        return True

    def lock_holders(self):
        return [{"pid": 4242, "application_name": "safedeploy.backfill fill other"}]

    # writing
    def ensure_state_table(self):
        self.calls.append("ensure_state_table")
        self.table_exists = True

    def init_state(self, name, spec, digest, last, max_key):
        self.calls.append("init_state")
        self.state = {"name": name, "definition": json.dumps(spec), "definition_digest": digest, "last_key": last,
                      "max_key": max_key, "rows_done": 0, "batches": 0, "runs": 0, "status": "running",
                      "started_at": "t0", "finished_at": None}

    def mark_running(self, name):
        self.state["runs"] += 1
        self.state["status"] = "running"

    def set_status(self, name, status, error, finished):
        self.state["status"] = status
        self.state["last_error"] = error
        if finished:
            self.state["finished_at"] = "t1"

    def batch(self, name, last, max_key, size):
        self.clock.now += self.batch_seconds
        keys = sorted(k for k in self.rows if last < k <= max_key)[:size]
        if not keys:
            return None
        if self.lock_failures.get(last):
            self.lock_failures[last] -= 1
            raise _backfill.LockTimeout("canceling statement due to lock timeout")
        if self.statement_timeout_at is not None and keys[0] <= self.statement_timeout_at <= keys[-1]:
            raise _backfill.StatementTimeout("canceling statement due to statement timeout")
        if self.fail_at is not None and keys[0] <= self.fail_at <= keys[-1]:
            raise _backfill.BatchFailed("CommandError: refusing")
        touched = 0
        for k in keys:
            if self.mode == "command" or not self.rows[k]:
                touched += 1
            self.rows[k] = True
        assert self.state["last_key"] == last
        self.state["last_key"] = keys[-1]
        self.state["rows_done"] += touched if self.mode == "sql" else len(keys)
        self.state["batches"] += 1
        return keys[-1], len(keys), touched


def request(**changes):
    spec = {"mode": "sql", "table": "t", "key": "id", "set": "done = true", "where": "NOT done"}
    base = {"name": "fill", "definition": spec, "batch_size": 100, "pause": 0.1, "lock_retries": 3,
            "retry_delay": 0.5, "statement_timeout": "5s", "lock_timeout": "1s", "deadline": None}
    base.update(changes)
    return base


def run(db, clock, lines=None, **changes):
    return _backfill.run_backfill(db, request(**changes), clock=clock, sleep=clock.sleep,
                                  log=(lines.append if lines is not None else None), rand=lambda: 1.0)


def test_a_run_does_every_row_once_in_batches_and_records_progress():
    clock = FakeClock()
    db = FakeDB(range(1, 1001), clock)
    lines = []
    reply = run(db, clock, lines)
    assert reply["ok"] and reply["status"] == "finished" and reply["changed"] is True
    assert reply["rows_done"] == reply["rows_done_total"] == 1000
    assert reply["batches"] == 10 and reply["last_key"] == 1000 and reply["max_key"] == 1000
    assert reply["rows_left"] == 0 and reply["eta_seconds"] == 0.0
    assert all(db.rows.values())
    assert db.state["status"] == "finished" and db.state["finished_at"] == "t1"
    assert clock.slept == [0.1] * 9  # a pause between batches, none after the last
    assert reply["longest_batch_seconds"] == 0.01
    assert lines[0].split(" ", 1)[1].startswith("backfill fill: started") and "left 1000" in lines[0]
    assert "finished" in lines[-1] and "rows done 1000" in lines[-1]


def test_a_finished_backfill_does_nothing_and_reports_unchanged():
    clock = FakeClock()
    db = FakeDB(range(1, 301), clock)
    run(db, clock)
    db.calls.clear()
    again = run(db, clock)
    assert again["ok"] and again["changed"] is False and again["status"] == "finished"
    assert again["rows_done"] == 0 and again["rows_done_total"] == 300
    assert "init_state" not in db.calls


def test_zero_matching_rows_is_not_a_change():
    clock = FakeClock()
    db = FakeDB(range(1, 301), clock)
    db.rows = {k: True for k in db.rows}
    reply = run(db, clock)
    assert reply["status"] == "finished" and reply["changed"] is False and reply["rows_done"] == 0
    assert reply["batches"] == 3


def test_an_empty_table_finishes_at_once():
    clock = FakeClock()
    db = FakeDB([], clock)
    reply = run(db, clock)
    assert reply["status"] == "finished" and reply["changed"] is False and reply["last_key"] is None


def test_max_runtime_pauses_and_the_next_run_resumes():
    clock = FakeClock()
    db = FakeDB(range(1, 1001), clock, batch_seconds=0.4)
    first = run(db, clock, deadline=1.0, deadline_reason="max_runtime")
    # 0.4 + 0.1 pause per batch: batches start at 0, 0.5 -> paused before the one at 1.0
    assert first["status"] == "paused" and first["stopped_by"] == "max_runtime" and first["changed"] is True
    assert first["rows_done"] == 200 and first["last_key"] == 200
    assert first["rows_left"] == 800 and first["eta_seconds"] == round(800 / first["rows_per_second"], 1)
    assert db.state["status"] == "paused"
    second = run(db, clock)
    assert second["status"] == "finished" and second["rows_done"] == 800 and second["rows_done_total"] == 1000
    assert second["runs"] == 2


def test_every_run_does_at_least_one_batch_however_short_max_runtime_is():
    clock = FakeClock()
    db = FakeDB(range(1, 1001), clock)
    clock.now = 0.0
    reply = run(db, clock, deadline=0.0, deadline_reason="max_runtime")
    assert reply["status"] == "paused" and reply["batches"] == 1 and reply["last_key"] == 100


def test_a_lock_timeout_is_retried_with_backoff():
    clock = FakeClock()
    db = FakeDB(range(1, 301), clock)
    db.lock_failures = {100: 2}
    reply = run(db, clock, pause=0)
    assert reply["status"] == "finished" and reply["retries"] == 2 and reply["rows_done"] == 300
    assert clock.slept == [0.5, 1.0]  # retry_delay * 2**(n-1), times 1.0 (rand)


def test_too_many_lock_timeouts_fail_with_the_progress_kept():
    clock = FakeClock()
    db = FakeDB(range(1, 301), clock)
    db.lock_failures = {100: 10}
    reply = run(db, clock, pause=0, lock_retries=2)
    assert reply["ok"] is False and reply["error_kind"] == "lock_timeout" and reply["status"] == "failed"
    assert "after key 100" in reply["message"] and "3 time(s)" in reply["message"]
    assert "lock_retries" in reply["message"]
    assert reply["rows_done"] == 100 and reply["last_key"] == 100 and reply["retries"] == 3
    assert db.state["status"] == "failed" and "lock_timeout" in db.state["last_error"]
    db.lock_failures = {}
    resumed = run(db, clock)
    assert resumed["status"] == "finished" and resumed["rows_done"] == 200


def test_a_statement_timeout_fails_at_once_and_says_what_to_change():
    clock = FakeClock()
    db = FakeDB(range(1, 301), clock)
    db.statement_timeout_at = 150
    reply = run(db, clock)
    assert reply["error_kind"] == "statement_timeout" and reply["retries"] == 0
    assert "Lower batch_size (now 100)" in reply["message"] and reply["last_key"] == 100


def test_a_failing_command_batch_is_reported_with_its_range():
    clock = FakeClock()
    db = FakeDB(range(1, 301), clock, mode="command")
    db.fail_at = 250
    command = {"mode": "command", "table": "t", "key": "id", "command": "c", "command_args": []}
    reply = run(db, clock, definition=command)
    assert reply["error_kind"] == "batch_failed" and "the command of the batch after key 200" in reply["message"]
    assert reply["changed"] is True and reply["rows_done"] == 200


def test_a_changed_definition_is_refused_unless_restart():
    clock = FakeClock()
    db = FakeDB(range(1, 301), clock)
    run(db, clock)
    other = {"mode": "sql", "table": "t", "key": "id", "set": "done = true", "where": "done IS NOT TRUE"}
    with pytest.raises(_backfill.BackfillError) as refused:
        run(db, clock, definition=other)
    assert refused.value.kind == "definition_changed"
    assert "where: 'NOT done' -> 'done IS NOT TRUE'" in refused.value.message
    assert "restart: true" in refused.value.message
    db.rows = {k: False for k in db.rows}
    restarted = run(db, clock, definition=other, restart=True)
    assert restarted["status"] == "finished" and restarted["rows_done_total"] == 300 and restarted["runs"] == 1


def test_check_mode_counts_and_changes_nothing():
    clock = FakeClock()
    db = FakeDB(range(1, 501), clock)
    reply = run(db, clock, check_mode=True)
    assert reply["check_mode"] and reply["would_update"] == 500 and reply["status"] == "new"
    assert reply["changed"] is True
    assert db.table_exists is False and db.state is None and not any(db.rows.values())
    assert db.calls == ["describe"]
    run(db, clock, deadline=0.25)  # some progress
    done = db.state["last_key"]
    again = run(db, clock, check_mode=True)
    assert again["would_update"] == 500 - done and again["status"] == "paused" and again["last_key"] == done


def test_another_run_of_the_same_backfill_is_waited_for_then_named():
    clock = FakeClock()
    db = FakeDB(range(1, 101), clock)
    db.locked_by_other = 3
    assert run(db, clock)["status"] == "finished"  # waited 1.5 s
    db2 = FakeDB(range(1, 101), clock)
    db2.locked_by_other = 1000
    with pytest.raises(_backfill.BackfillError) as busy:
        run(db2, clock)
    assert busy.value.kind == "busy" and "pid 4242" in busy.value.message


def test_progress_lines_are_throttled_to_one_a_second():
    clock = FakeClock()
    db = FakeDB(range(1, 10001), clock, batch_seconds=0.1)
    lines = []
    run(db, clock, lines, pause=0, batch_size=10)  # 1000 batches over 100 s
    assert 95 <= len(lines) <= 105
