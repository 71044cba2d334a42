"""django_backfill through real Ansible, real PostgreSQL and the backfillproj test project.

backfillproj (tests/integration/projects/backfillproj) has one table, ``fill_entry`` (id, name,
display_name NULL, counter 0), and two management commands: ``fill_display_names`` (--start/--end,
--prefix, --fail-at) and ``fill_without_range`` (no --start/--end). Most backfills below increment
``counter`` with ``where: counter = 0``: a row done twice would show as 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from tests.integration.test_django_live import (
    ANSIBLE,
    ANSIBLE_PLAYBOOK,
    PROJECTS,
    PYTHON,
    ansible,
    base_env,
    common,
    manage,
    parse_adhoc,
    sql,
)

pytestmark = pytest.mark.slow

PROJECT = PROJECTS / "backfillproj"
COUNT = {"set": "counter = counter + 1, display_name = name", "where": "counter = 0"}


def prepare(db_env: dict, rows: int) -> dict:
    env = base_env(db_env)
    manage(PROJECT, env, "migrate", "-v", "0")
    sql(db_env, "INSERT INTO fill_entry (name, counter) SELECT 'n' || g, 0 FROM generate_series(1, %s) g "
                "RETURNING 1", (rows,))
    return env


def args(name: str, **extra) -> dict:
    return dict(common(PROJECT, name=name, table="fill_entry"), **extra)


def counters(db_env: dict) -> dict:
    return dict(sql(db_env, "SELECT counter, count(*) FROM fill_entry GROUP BY 1"))


def state(db_env: dict, name: str) -> dict | None:
    if not sql(db_env, "SELECT to_regclass('safedeploy_backfill') IS NOT NULL")[0][0]:
        return None
    rows = sql(db_env, "SELECT name, last_key, max_key, rows_done, batches, runs, status, last_error, finished_at "
                       "FROM safedeploy_backfill WHERE name = %s", (name,))
    if not rows:
        return None
    keys = ("name", "last_key", "max_key", "rows_done", "batches", "runs", "status", "last_error", "finished_at")
    return dict(zip(keys, rows[0], strict=True))


def connect(db_env: dict, **kwargs):
    return psycopg.connect(host=db_env["PGHOST"], port=db_env["PGPORT"], user=db_env["PGUSER"],
                           password=db_env["PGPASSWORD"], dbname=db_env["PGDATABASE"], **kwargs)


@contextlib.contextmanager
def row_lock(db_env: dict, row_id: int, hold: float = 60.0):
    """Another session holding the lock of one row (SELECT ... FOR UPDATE) until the block ends, or ``hold``."""
    ready, release = threading.Event(), threading.Event()

    def run():
        with connect(db_env, application_name="test-row-lock") as conn:
            conn.execute("SELECT id FROM fill_entry WHERE id = %s FOR UPDATE", (row_id,))
            ready.set()
            release.wait(hold)
            conn.rollback()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "the row lock was not taken"
    try:
        yield
    finally:
        release.set()
        thread.join(10)


def start_ansible(module_args: dict, env: dict) -> subprocess.Popen:
    argv = [ANSIBLE, "localhost", "-m", "safedeploy.django.django_backfill", "-a", json.dumps(module_args)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def backfill_session(db_env: dict, name: str) -> tuple | None:
    """(helper pid from application_name, backend pid, wait_event_type) of the running backfill, if any."""
    rows = sql(db_env, "SELECT application_name, pid, wait_event_type FROM pg_stat_activity "
                       "WHERE application_name LIKE %s", (f"safedeploy.backfill {name} %",))
    if not rows:
        return None
    app, backend, wait = rows[0]
    return int(app.rsplit(" pid ", 1)[1]), backend, wait


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def backend_gone(db_env: dict, backend: int) -> bool:
    return not sql(db_env, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,))


# -- SQL mode, check mode, idempotence, progress log ---------------------------------------------------


def test_sql_mode_check_mode_run_and_second_run(pg_database, tmp_path):
    env = prepare(pg_database, 3000)
    sql(pg_database, "UPDATE fill_entry SET counter = 1, display_name = name WHERE id %% 10 = 0 RETURNING 1")
    log = tmp_path / "progress" / "fill.log"

    checked = ansible("django_backfill", args("fill", batch_size=500, pause=0, progress_log=str(log), **COUNT), env,
                      check=True)
    assert checked["_status"] == "CHANGED", checked.get("msg")
    assert checked["would_update"] == 2700 and checked["status"] == "new" and checked["max_key"] == 3000
    assert state(pg_database, "fill") is None  # no state table in check mode
    assert counters(pg_database) == {0: 2700, 1: 300} and not log.exists()

    result = ansible("django_backfill", args("fill", batch_size=500, pause=0, progress_log=str(log), **COUNT), env)
    assert result["_status"] == "CHANGED", result.get("msg")
    assert result["status"] == "finished" and result["rows_done"] == 2700 and result["rows_done_total"] == 2700
    assert result["batches"] == 6 and result["last_key"] == 3000 and result["rows_left"] == 0
    assert result["rows_per_second"] > 0 and result["longest_batch_seconds"] > 0 and result["eta_seconds"] == 0
    assert counters(pg_database) == {1: 3000}
    assert sql(pg_database, "SELECT count(*) FROM fill_entry WHERE display_name IS DISTINCT FROM name")[0][0] == 0
    saved = state(pg_database, "fill")
    assert saved["status"] == "finished" and saved["last_key"] == 3000 and saved["rows_done"] == 2700
    assert saved["finished_at"] is not None and saved["runs"] == 1

    lines = log.read_text().splitlines()
    assert "backfill fill: started" in lines[0] and "left 2700" in lines[0]
    assert "backfill fill: finished" in lines[-1] and "rows done 2700" in lines[-1]
    assert oct(log.stat().st_mode & 0o777) == "0o600"

    again = ansible("django_backfill", args("fill", batch_size=500, pause=0, **COUNT), env)
    assert again["_status"] == "SUCCESS" and again["changed"] is False and again["status"] == "finished"
    assert again["rows_done"] == 0 and again["rows_done_total"] == 2700
    assert counters(pg_database) == {1: 3000}

    checked = ansible("django_backfill", args("fill", **COUNT), env, check=True)
    assert checked["_status"] == "SUCCESS" and checked["would_update"] == 0 and checked["status"] == "finished"


def test_nothing_to_update_is_no_change_but_finishes(pg_database):
    env = prepare(pg_database, 500)
    sql(pg_database, "UPDATE fill_entry SET counter = 1 RETURNING 1")
    result = ansible("django_backfill", args("none-left", batch_size=200, pause=0, **COUNT), env)
    assert result["_status"] == "SUCCESS" and result["changed"] is False, result.get("msg")
    assert result["status"] == "finished" and result["batches"] == 3 and result["rows_done"] == 0


# -- command mode ----------------------------------------------------------------------------------------


def test_command_mode_runs_the_command_per_range(pg_database):
    env = prepare(pg_database, 2000)
    sql(pg_database, "DELETE FROM fill_entry WHERE id BETWEEN 300 AND 699 RETURNING 1")  # a gap in the keys
    run = args("cmd", command="fill_display_names", command_args=["--prefix", "x-"], batch_size=450, pause=0)

    checked = ansible("django_backfill", run, env, check=True)
    assert checked["would_update"] == 1600 and state(pg_database, "cmd") is None

    result = ansible("django_backfill", run, env)
    assert result["_status"] == "CHANGED", result.get("msg")
    assert result["status"] == "finished" and result["rows_done"] == 1600 and result["batches"] == 4
    assert counters(pg_database) == {1: 1600}  # each row in exactly one range
    assert sql(pg_database, "SELECT count(*) FROM fill_entry WHERE display_name <> 'x-' || upper(name)")[0][0] == 0
    assert ansible("django_backfill", run, env)["changed"] is False


def test_a_failing_command_keeps_the_batches_before_it(pg_database):
    env = prepare(pg_database, 1000)
    failing = args("cmd-fail", command="fill_display_names", command_args=["--fail-at", "650"], batch_size=200,
                   pause=0)
    result = ansible("django_backfill", failing, env)
    assert result["_status"].startswith("FAILED") and result["error_kind"] == "batch_failed"
    assert "refusing the range holding id 650" in result["msg"] and "after key 600" in result["msg"]
    assert result["status"] == "failed" and result["rows_done"] == 600 and result["last_key"] == 600
    assert counters(pg_database) == {1: 600, 0: 400}  # the failed range was rolled back
    saved = state(pg_database, "cmd-fail")
    assert saved["status"] == "failed" and "650" in saved["last_error"] and saved["last_key"] == 600

    # other command_args under the same name: another definition
    fixed = args("cmd-fail", command="fill_display_names", batch_size=200, pause=0)
    refused = ansible("django_backfill", fixed, env)
    assert refused["_status"].startswith("FAILED") and refused["error_kind"] == "definition_changed"
    assert "command_args" in refused["msg"] and "restart: true" in refused["msg"]
    assert counters(pg_database) == {1: 600, 0: 400}

    # restart starts over from the first key: this command has no idempotency condition, so rows 1..600 run twice
    restarted = ansible("django_backfill", dict(fixed, restart=True), env)
    assert restarted["status"] == "finished" and restarted["rows_done"] == 1000 and restarted["runs"] == 1
    assert counters(pg_database) == {2: 600, 1: 400}


def test_a_command_without_start_and_end_is_refused_before_any_batch(pg_database):
    env = prepare(pg_database, 100)
    result = ansible("django_backfill", args("norange", command="fill_without_range"), env)
    assert result["_status"].startswith("FAILED") and result["error_kind"] == "bad_command"
    assert "--start and --end" in result["msg"]
    assert state(pg_database, "norange") is None and counters(pg_database) == {0: 100}


# -- resume after a kill ------------------------------------------------------------------------------------


def test_kill_mid_batch_resumes_where_it_stopped_and_does_every_row_once(pg_database):
    env = prepare(pg_database, 20000)
    run = args("killed", batch_size=200, pause=0.02, lock_timeout="30s", **COUNT)
    with row_lock(pg_database, 10050):
        proc = start_ansible(run, env)
        try:
            # the batch (10000, 10200] updated rows 10001..10049 and waits for row 10050
            helper_pid, backend, _wait = wait_for(
                lambda: (s := backfill_session(pg_database, "killed")) and s[2] == "Lock" and s, 60,
                "the backfill to wait for the locked row")
            saved = state(pg_database, "killed")
            assert saved["last_key"] == 10000 and saved["status"] == "running"
            os.kill(helper_pid, signal.SIGKILL)
            out, _err = proc.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert "FAILED" in out
    wait_for(lambda: backend_gone(pg_database, backend), 30, "the killed run's session to end")
    saved = state(pg_database, "killed")
    assert saved["last_key"] == 10000 and saved["rows_done"] == 10000 and saved["status"] == "running"
    # exactly the committed batches are done: the half-done batch was rolled back
    assert counters(pg_database) == {1: 10000, 0: 10000}
    assert sql(pg_database, "SELECT max(id) FROM fill_entry WHERE counter = 1")[0][0] == 10000

    result = ansible("django_backfill", dict(run, pause=0), env)
    assert result["_status"] == "CHANGED", result.get("msg")
    assert result["status"] == "finished" and result["rows_done"] == 10000 and result["rows_done_total"] == 20000
    assert result["runs"] == 2
    assert counters(pg_database) == {1: 20000}


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def test_killing_the_module_at_any_moment_leaves_a_consistent_state(pg_database):
    env = prepare(pg_database, 20000)
    run = args("killed2", batch_size=100, pause=0.05, **COUNT)
    proc = start_ansible(run, env)
    try:
        wait_for(lambda: (s := state(pg_database, "killed2")) and s["last_key"] >= 2000, 60, "some progress")
        helper_pid = backfill_session(pg_database, "killed2")[0]
        # the module (the helper's parent), between or inside a batch; the helper dies with it (SIGTERM)
        os.kill(parent_pid(helper_pid), signal.SIGKILL)
        out, _err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert "FAILED" in out or "UNREACHABLE" in out
    wait_for(lambda: backfill_session(pg_database, "killed2") is None, 30, "the helper's session to end")
    saved = state(pg_database, "killed2")
    assert 2000 <= saved["last_key"] < 19000 and saved["status"] == "running"
    assert counters(pg_database) == {1: saved["last_key"], 0: 20000 - saved["last_key"]}
    assert sql(pg_database, "SELECT max(id) FROM fill_entry WHERE counter = 1")[0][0] == saved["last_key"]

    result = ansible("django_backfill", dict(run, pause=0, batch_size=2000), env)
    assert result["status"] == "finished" and result["rows_done"] == 20000 - saved["last_key"]
    assert counters(pg_database) == {1: 20000}


# -- lock_timeout, statement_timeout, max_runtime --------------------------------------------------------


def test_lock_timeout_is_retried_while_another_session_holds_a_row(pg_database):
    env = prepare(pg_database, 1000)
    run = args("locked", batch_size=100, pause=0, lock_timeout="200ms", lock_retries=30, retry_delay=0.1, **COUNT)
    with row_lock(pg_database, 450):
        proc = start_ansible(run, env)
        try:
            wait_for(lambda: (s := backfill_session(pg_database, "locked")) and s[2] == "Lock", 60,
                     "the backfill to wait for the locked row")
            time.sleep(1.5)  # several lock_timeouts and back-offs
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    out, _err = proc.communicate(timeout=120)
    status, result = parse_adhoc(out)
    assert status == "CHANGED", out
    assert result["status"] == "finished" and result["retries"] >= 2 and result["rows_done"] == 1000
    assert counters(pg_database) == {1: 1000}


def test_lock_timeout_without_retries_left_fails_and_keeps_the_progress(pg_database):
    env = prepare(pg_database, 1000)
    run = args("locked2", batch_size=100, pause=0, lock_timeout="200ms", lock_retries=1, retry_delay=0.1, **COUNT)
    with row_lock(pg_database, 450):
        result = ansible("django_backfill", run, env)
    assert result["_status"].startswith("FAILED") and result["error_kind"] == "lock_timeout"
    assert "after key 400" in result["msg"] and "2 time(s)" in result["msg"] and result["retries"] == 2
    assert result["rows_done"] == 400 and result["last_key"] == 400
    assert counters(pg_database) == {1: 400, 0: 600}
    assert state(pg_database, "locked2")["status"] == "failed"
    resumed = ansible("django_backfill", run, env)
    assert resumed["status"] == "finished" and resumed["rows_done"] == 600 and counters(pg_database) == {1: 1000}


def test_a_batch_longer_than_statement_timeout_is_rolled_back(pg_database):
    env = prepare(pg_database, 500)
    slow = {"set": "counter = counter + 1 + (SELECT 0 FROM pg_sleep(0.6))", "where": "counter = 0"}
    result = ansible("django_backfill", args("slow", batch_size=100, statement_timeout="200ms", **slow), env)
    assert result["_status"].startswith("FAILED") and result["error_kind"] == "statement_timeout"
    assert "Lower batch_size (now 100)" in result["msg"] and result["rows_done"] == 0
    assert counters(pg_database) == {0: 500}
    saved = state(pg_database, "slow")
    assert saved["last_key"] == 0 and saved["status"] == "failed"

    # a statement_timeout the batch fits in: the same definition resumes and finishes
    result = ansible("django_backfill", args("slow", batch_size=250, pause=0, statement_timeout="5s", **slow), env)
    assert result["status"] == "finished" and counters(pg_database) == {1: 500}


def test_max_runtime_pauses_and_the_next_run_resumes(pg_database):
    env = prepare(pg_database, 3000)
    run = args("sliced", batch_size=100, pause=0.2, max_runtime=1, **COUNT)
    first = ansible("django_backfill", run, env)
    assert first["_status"] == "CHANGED", first.get("msg")
    assert first["status"] == "paused" and first["stopped_by"] == "max_runtime"
    assert 0 < first["rows_done"] < 3000 and first["rows_left"] == 3000 - first["rows_done"]
    assert first["eta_seconds"] > 0 and first["elapsed"] < 3
    assert state(pg_database, "sliced")["status"] == "paused"
    assert counters(pg_database) == {1: first["rows_done"], 0: 3000 - first["rows_done"]}

    rest = ansible("django_backfill", dict(run, pause=0, max_runtime=60), env)
    assert rest["status"] == "finished" and rest["rows_done"] == 3000 - first["rows_done"]
    assert rest["rows_done_total"] == 3000 and counters(pg_database) == {1: 3000}


# -- refusals and argument errors ---------------------------------------------------------------------------


def test_a_changed_definition_is_refused_and_restart_starts_over(pg_database):
    env = prepare(pg_database, 400)
    assert ansible("django_backfill", args("def", pause=0, **COUNT), env)["status"] == "finished"
    other = {"set": "display_name = upper(name)", "where": "display_name IS DISTINCT FROM upper(name)"}
    refused = ansible("django_backfill", args("def", **other), env)
    assert refused["_status"].startswith("FAILED") and refused["error_kind"] == "definition_changed"
    assert "set: 'counter = counter + 1, display_name = name' -> 'display_name = upper(name)'" in refused["msg"]
    assert sql(pg_database, "SELECT count(*) FROM fill_entry WHERE display_name = upper(name)")[0][0] == 0

    checked = ansible("django_backfill", args("def", restart=True, **other), env, check=True)
    assert checked["would_restart"] is True and checked["would_update"] == 400

    restarted = ansible("django_backfill", args("def", restart=True, pause=0, **other), env)
    assert restarted["status"] == "finished" and restarted["rows_done"] == 400 and restarted["runs"] == 1
    assert sql(pg_database, "SELECT count(*) FROM fill_entry WHERE display_name = upper(name)")[0][0] == 400


@pytest.mark.parametrize(
    ("extra", "kind", "expected"),
    [
        ({"table": "fill_missing", **COUNT}, "bad_table", "table fill_missing does not exist"),
        ({"key": "name", **COUNT}, "bad_key", "is character varying"),
        ({"key": "nope", **COUNT}, "bad_key", "has no column nope"),
        ({"set": "counter = 1"}, "arguments", "where is required with set"),
        ({"set": "counter = 1", "where": "counter = 0; DROP TABLE fill_entry"}, "arguments", "without ';'"),
        ({"batch_size": 0, **COUNT}, "arguments", "batch_size must be 1 or more"),
        ({"lock_timeout": "soon", **COUNT}, "arguments", "lock_timeout must be a PostgreSQL duration"),
    ],
)
def test_argument_errors(pg_database, extra, kind, expected):
    env = prepare(pg_database, 10)
    result = ansible("django_backfill", args("bad", **extra), env)
    assert result["_status"].startswith("FAILED") and result["error_kind"] == kind, result.get("msg")
    assert expected in result["msg"]
    assert counters(pg_database) == {0: 10}


# -- playbooks/backfill.yml ------------------------------------------------------------------------------------


def run_playbook(db_env: dict, tmp_path, *options: str, **extra_vars) -> subprocess.CompletedProcess:
    """The documented command; the database variables travel in a vars file, as release_environment."""
    variables = {"release_hosts": "localhost", "backfill_project_path": str(PROJECT), "backfill_python": PYTHON,
                 "release_environment": dict(db_env), **extra_vars}
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(variables))
    vars_file.chmod(0o600)
    env = base_env(ANSIBLE_PYTHON_INTERPRETER=PYTHON)
    argv = [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local", "safedeploy.django.backfill", "-e", f"@{vars_file}",
            *options]
    proc = subprocess.run(argv, env=env, capture_output=True, check=False, text=True, timeout=300, cwd=tmp_path)
    assert db_env["PGPASSWORD"] not in proc.stdout + proc.stderr, "the database password leaked"
    return proc


def test_playbook_runs_in_slices_and_prints_each_one(pg_database, tmp_path):
    prepare(pg_database, 3000)
    fill = {"backfill_name": "pb", "backfill_table": "fill_entry", "backfill_set": COUNT["set"],
            "backfill_where": COUNT["where"], "backfill_batch_size": 100, "backfill_pause": 0.1,
            "backfill_slice_seconds": 1}

    checked = run_playbook(pg_database, tmp_path, "--check", **fill)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "would update 3000" in checked.stdout and "Check mode: it would update 3000 rows" in checked.stdout
    assert state(pg_database, "pb") is None

    proc = run_playbook(pg_database, tmp_path, **fill)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    slices = [line for line in proc.stdout.splitlines() if "(item=slice " in line]
    assert len(slices) >= 2, proc.stdout
    assert all("paused" in line for line in slices[:-1]) and "finished" in slices[-1]
    assert "rows/s" in slices[0] and "ETA" in slices[0] and "left" in slices[0]
    assert "3000 rows done (+" in slices[-1] and "key 3000/3000" in slices[-1]
    assert "Backfill pb on localhost: finished, 3000 rows done in all" in proc.stdout
    assert counters(pg_database) == {1: 3000}
    assert state(pg_database, "pb")["runs"] == len(slices)


def test_playbook_checks_its_arguments_first(pg_database, tmp_path):
    proc = run_playbook(pg_database, tmp_path, backfill_name="pb", backfill_table="fill_entry",
                        backfill_set="counter = 1")
    assert proc.returncode != 0 and "Usage: -e backfill_name=" in proc.stdout
    assert "django_backfill" not in proc.stdout.split("Check the arguments", 1)[1].split("Usage", 1)[0]
