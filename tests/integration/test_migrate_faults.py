"""django_migrate_once under faults: real Ansible processes, real PostgreSQL, real signals.

Concurrent deploys, a runner killed with SIGKILL mid-migration, a long transaction
blocking the DDL (lock_timeout + retries), refusals before any change (wrong
target, a real streaming replica, a changed password, all at -vvvv without the
password showing) and a migration failing halfway.

The project is tests/integration/projects/faultproj; its migrations read
FAULTPROJ_SLEEP (seconds 0002 sleeps after its ALTER TABLE) and
FAULTPROJ_FAIL_0003=1 (0003 raises after creating its table).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg
import pytest

from tests.integration.test_django_live import base_env, parse_adhoc

pytestmark = pytest.mark.slow

FAULT = Path(__file__).resolve().parent / "projects" / "faultproj"
ANSIBLE = str(Path(sys.executable).parent / "ansible")
PYTHON = sys.executable  # the application's interpreter (it has Django and psycopg)
MODULE = "safedeploy.django.django_migrate_once"
ALL = ["fault.0001_initial", "fault.0002_item_note", "fault.0003_tag", "fault.0004_item_tag"]


# -- helpers ------------------------------------------------------------------------------


def common(**extra) -> dict:
    return dict({"project_path": str(FAULT), "python": PYTHON}, **extra)


def module_argv(args: dict, *, verbosity: int = 0) -> list[str]:
    argv = [ANSIBLE, "localhost", "-m", MODULE, "-a", json.dumps(args)]
    if verbosity:
        argv.append("-" + "v" * verbosity)
    return argv


def finish(stdout: str, stderr: str, secrets) -> dict:
    output = stdout + stderr
    for secret in secrets:
        if secret:
            assert secret not in output, "a database password leaked into Ansible's output"
    status, result = parse_adhoc(stdout)
    result["_status"] = status
    result["_output"] = output
    return result


def run_module(args: dict, env: dict, *, verbosity: int = 0, secrets=()) -> dict:
    proc = subprocess.run(module_argv(args, verbosity=verbosity), env=env, capture_output=True, check=False,
                          text=True, timeout=180)
    return finish(proc.stdout, proc.stderr, [env.get("PGPASSWORD"), *secrets])


def run_parallel(count: int, args: dict, env: dict) -> list[dict]:
    procs = [subprocess.Popen(module_argv(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _run in range(count)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=180)
        results.append(finish(stdout, stderr, [env.get("PGPASSWORD")]))
    return results


def connect(db_env: dict, **kwargs) -> psycopg.Connection:
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(host=db_env["PGHOST"], port=db_env["PGPORT"], user=db_env["PGUSER"],
                           password=db_env["PGPASSWORD"], dbname=db_env["PGDATABASE"], **kwargs)


def sql(db_env: dict, query: str, params=()):
    with connect(db_env) as conn:
        return conn.execute(query, params).fetchall()


def recorded(db_env: dict) -> list[tuple]:
    """django_migrations as it is (id, app, name, applied), [] before it exists."""
    if not sql(db_env, "SELECT to_regclass('django_migrations') IS NOT NULL")[0][0]:
        return []
    return sql(db_env, "SELECT id, app, name, applied FROM django_migrations ORDER BY id")


def applied_ids(db_env: dict) -> list[str]:
    return [f"{app}.{name}" for _id, app, name, _at in recorded(db_env)]


def has_column(db_env: dict, table: str, column: str) -> bool:
    return bool(sql(db_env, "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
                    [table, column]))


def has_table(db_env: dict, table: str) -> bool:
    return sql(db_env, "SELECT to_regclass(%s) IS NOT NULL", [table])[0][0]


def manage(env: dict, *args: str) -> str:
    proc = subprocess.run([PYTHON, "manage.py", *args], cwd=FAULT, env=env, capture_output=True, check=False,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def advisory_holders(db_env: dict) -> list[tuple]:
    return sql(db_env, "SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                       "WHERE l.locktype = 'advisory' AND l.granted "
                       "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")


@contextmanager
def watching_lock_holders(db_env: dict):
    """Collect (pid, application_name) of every session seen holding an advisory lock in the database."""
    seen: set[tuple] = set()
    stop = threading.Event()

    def watch():
        with connect(db_env) as conn:
            while not stop.is_set():
                seen.update(conn.execute(
                    "SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted "
                    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())").fetchall())
                time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=10)


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (from /proc), whatever its session or process group."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


@pytest.fixture()
def second_database(pg_cluster, pg_database):
    """Another fresh database owned by the same role, as libpq env vars."""
    name = (pg_database["PGDATABASE"] + "_b")[:63]
    pg_cluster.drop_database(name)
    pg_cluster.create_database(name, owner=pg_database["PGUSER"])
    yield dict(pg_database, PGDATABASE=name)
    pg_cluster.drop_database(name)


# -- 1. five deploys at once ---------------------------------------------------------------


def test_five_deploys_at_once_apply_each_migration_once(pg_database, second_database):
    # Waiting long enough: one applies, the four others queue, re-plan under the lock, find nothing.
    env = base_env(pg_database, FAULTPROJ_SLEEP="3")
    results = run_parallel(5, common(lock_wait=120), env)
    assert sorted(r["_status"] for r in results) == ["CHANGED"] + ["SUCCESS"] * 4, [r.get("msg") for r in results]
    winner = next(r for r in results if r["_status"] == "CHANGED")
    assert winner["changed"] is True
    assert [a["id"] for a in winner["applied"]] == ALL
    assert winner["pending_before"] == ALL
    seconds = {a["id"]: a["seconds"] for a in winner["applied"]}
    assert seconds["fault.0002_item_note"] >= 3  # its pg_sleep(3)
    for other in results:
        if other is not winner:
            assert other["changed"] is False and other["applied"] == [] and other["pending_before"] == []
            assert other["lock"]["acquired"] is True
    assert max(r["lock"]["waited"] for r in results) > 1  # they really queued behind the winner
    assert applied_ids(pg_database) == ALL
    assert sql(pg_database, "SELECT app, name FROM django_migrations GROUP BY app, name HAVING count(*) > 1") == []
    assert has_column(pg_database, "fault_item", "tag_id")
    assert advisory_holders(pg_database) == []

    # Waiting 1 s only: the four others give up and name the session that holds the lock.
    env = base_env(second_database, FAULTPROJ_SLEEP="8")
    with watching_lock_holders(second_database) as holders:
        results = run_parallel(5, common(lock_wait=1), env)
    assert sorted(r["_status"] for r in results) == ["CHANGED"] + ["FAILED!"] * 4, [r.get("msg") for r in results]
    assert len(holders) == 1, holders  # only the winner ever held it
    (holder_pid, holder_app), = holders
    assert holder_app.startswith("safedeploy.migrate ")
    for result in results:
        if result["_status"] == "FAILED!":
            assert result["error_kind"] == "lock_timeout"
            assert f"pid {holder_pid}" in result["msg"], result["msg"]
            assert f"application_name '{holder_app}'" in result["msg"], result["msg"]
            assert result["lock"]["holders"][0]["pid"] == holder_pid
            assert result.get("applied", []) == []
    assert applied_ids(second_database) == ALL
    assert sql(second_database, "SELECT app, name FROM django_migrations GROUP BY app, name HAVING count(*) > 1") == []


# -- 2. kill -9 of the runner mid-migration ---------------------------------------------------


@contextmanager
def run_stopped_mid_migration(db_env: dict, stop, what: str):
    """Start the module on a 30 s atomic migration (ALTER TABLE, then pg_sleep(30)); once the sleep runs,
    call ``stop(proc, family)`` and wait up to 10 s for every session of the run and the advisory lock
    to be gone. Yields nothing; every process of the run is killed (by pid) on the way out."""
    proc = subprocess.Popen(module_argv(common(lock_wait=30)), env=base_env(db_env, FAULTPROJ_SLEEP="30"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    family: list[int] = []
    try:
        with connect(db_env) as watcher:
            me = watcher.info.backend_pid
            deadline = time.monotonic() + 60
            while not watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
                "AND query LIKE 'SELECT pg_sleep(30%%'"
            ).fetchall():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the migration's sleep never started"
                time.sleep(0.1)
            runner_sessions = {pid for (pid,) in watcher.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s", [me])}
            assert len(runner_sessions) >= 2  # the lock session and the migrating one
            family = [proc.pid, *descendants(proc.pid)]
            assert any("safedeploy_django_helper" in cmdline(pid) for pid in family), [cmdline(p) for p in family]

            stop(proc, family)
            proc.communicate(timeout=30)
            stopped_at = time.monotonic()
            while True:
                left = {pid for (pid,) in watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s", [me])}
                locks = watcher.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory'").fetchall()
                if not (left & runner_sessions) and not locks:
                    break
                if time.monotonic() - stopped_at > 10:
                    survivors = {pid: cmdline(pid) for pid in family if alive(pid)}
                    pytest.fail(f"10 s after {what}: sessions {sorted(left & runner_sessions)} and advisory locks "
                                f"{locks} are still there (processes of the run still alive: {survivors})")
                time.sleep(0.2)
            assert not {pid: cmdline(pid) for pid in family if alive(pid)}
        yield
    finally:
        for pid in family:
            if alive(pid):
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        with suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def test_sigkill_of_the_runner_mid_migration_leaves_nothing_behind(pg_database):
    def kill_everything(proc, family):
        # SIGKILL the whole run: the controller's process group, and by pid the processes that left it
        # (ansible's worker calls setsid(), the module starts the helper in a new session).
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in family:
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    with run_stopped_mid_migration(pg_database, kill_everything, "SIGKILL of the runner"):
        pass
    # 0001 committed in its own transaction; 0002's ALTER rolled back with the dead session.
    assert not has_column(pg_database, "fault_item", "note")
    assert applied_ids(pg_database) == ["fault.0001_initial"]

    rerun = run_module(common(), base_env(pg_database, FAULTPROJ_SLEEP="0.5"))
    assert rerun["_status"] == "CHANGED", rerun.get("msg")
    assert [a["id"] for a in rerun["applied"]] == ALL[1:]
    assert applied_ids(pg_database) == ALL
    assert has_column(pg_database, "fault_item", "note")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_ansible_mid_migration_stops_it(pg_database, signum):
    def interrupt(proc, _family):
        proc.send_signal(signum)  # to the ansible controller only, as a terminal or a CI cancel does

    with run_stopped_mid_migration(pg_database, interrupt, signal.strsignal(signum) + " of ansible"):
        pass
    assert not has_column(pg_database, "fault_item", "note")
    assert applied_ids(pg_database) == ["fault.0001_initial"]


# -- 3. a long transaction blocks the ALTER ------------------------------------------------------

BLOCKER_MARK = "faulttest-blocker-query"


@contextmanager
def blocking_transaction(db_env: dict, *, release_after_wait: float | None = None):
    """An open transaction that read fault_item (ACCESS SHARE, so the ALTER waits for it).

    With ``release_after_wait``, a thread commits it that many seconds after a session
    was first seen waiting for a lock on the table; otherwise it commits on exit.
    """
    conn = connect(db_env, autocommit=False, application_name="faulttest-blocker")
    conn.execute(f"SELECT count(*) FROM fault_item /* {BLOCKER_MARK} */").fetchall()
    stop = threading.Event()
    seen_waiting: list[float] = []

    def release_later():
        with connect(db_env) as watcher:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                waiting = watcher.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'fault_item'::regclass"
                ).fetchone()[0]
                if waiting:
                    seen_waiting.append(time.monotonic())
                    stop.wait(release_after_wait)
                    break
                time.sleep(0.05)
        with suppress(psycopg.Error):
            conn.commit()

    thread = None
    if release_after_wait is not None:
        thread = threading.Thread(target=release_later, daemon=True)
        thread.start()
    try:
        yield conn.info.backend_pid, seen_waiting
    finally:
        stop.set()
        if thread:
            thread.join(timeout=70)
        with suppress(psycopg.Error):
            conn.commit()
        conn.close()


def names_blocker(blockers: list[dict], pid: int) -> bool:
    """``blockers`` (the module's result) holds the blocking session, with its query text."""
    return any(b["pid"] == pid and BLOCKER_MARK in (b["query"] or "") and b["application_name"] == "faulttest-blocker"
               for b in blockers)


def test_lock_timeout_retries_until_the_blocking_transaction_ends(pg_database):
    env = base_env(pg_database)
    manage(env, "migrate", "fault", "0001", "-v", "0")
    before = recorded(pg_database)

    # No retries: the first lock timeout fails the run, names the blocker, changes nothing.
    with blocking_transaction(pg_database) as (blocker_pid, _seen):
        started = time.monotonic()
        failed = run_module(common(lock_timeout="500ms", retries=0), env)
        took = time.monotonic() - started
    assert failed["_status"] == "FAILED!"
    assert f"pid {blocker_pid}" in failed["msg"] and BLOCKER_MARK in failed["msg"], failed["msg"]
    assert "lock_timeout=500ms" in failed["msg"]
    assert names_blocker(failed["blockers"], blocker_pid), failed["blockers"]
    assert failed["retries_used"] == 0 and len(failed["attempts"]) == 1
    assert blocker_pid in failed["attempts"][0]["blockers"]
    assert failed["failed_migration"]["id"] == "fault.0002_item_note"
    assert failed["failed_migration"]["sqlstate"] == "55P03"  # lock_not_available
    assert failed["applied"] == [] and failed["not_attempted"] == ALL[2:]
    assert took < 30
    assert recorded(pg_database) == before
    assert not has_column(pg_database, "fault_item", "note")

    # Retries: attempts time out after lock_timeout while the transaction is open, then one succeeds.
    with blocking_transaction(pg_database, release_after_wait=2.0) as (blocker_pid, seen_waiting):
        result = run_module(common(lock_timeout="500ms", retries=6, retry_delay=0.5), env)
    assert seen_waiting, "the migration never waited for the blocker"
    assert result["_status"] == "CHANGED", result.get("msg")
    assert [a["id"] for a in result["applied"]] == ALL[1:]
    assert result["retries_used"] >= 1
    assert len(result["attempts"]) == result["retries_used"] + 1
    *failures, last = result["attempts"]
    for attempt in failures:
        assert attempt["failed"]["id"] == "fault.0002_item_note", attempt
        assert attempt["failed"]["sqlstate"] == "55P03", attempt
        assert attempt["applied"] == []
        assert attempt["seconds"] < 0.5 + 1, attempt  # gave up after lock_timeout, did not queue behind it
        assert blocker_pid in attempt["blockers"], attempt
    assert last["failed"] is None and last["applied"] == ALL[1:]
    assert names_blocker(result["blockers"], blocker_pid), result["blockers"]
    assert result["failed_migration"] is None
    assert applied_ids(pg_database) == ALL
    assert sql(pg_database, "SELECT app, name FROM django_migrations GROUP BY app, name HAVING count(*) > 1") == []


# -- 4. refused before any change, password never shown at -vvvv -----------------------------


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory):
    """A primary of our own with a real streaming replica (the session cluster stays untouched)."""
    from devtools.pgcluster import Cluster

    base = tmp_path_factory.mktemp("faultpg")
    primary = Cluster(base / "primary").ensure_started()
    try:
        replica = primary.create_replica(base / "replica")
    except BaseException:
        primary.destroy()
        raise
    yield primary, replica
    replica.destroy()
    primary.destroy()


@pytest.fixture()
def own_database(own_cluster, request):
    primary, _replica = own_cluster
    name = "f_" + request.node.name.lower().replace("[", "_").replace("]", "").replace("-", "_")[:40]
    password = "Pw-" + os.urandom(8).hex()
    primary.create_role("fault_owner", password)
    primary.drop_database(name)
    primary.create_database(name, owner="fault_owner")
    yield primary.env("fault_owner", password, name)
    primary.drop_database(name)


def test_refused_when_the_database_is_not_the_expected_one(own_database):
    password = own_database["PGPASSWORD"]
    manage(base_env(own_database), "migrate", "fault", "0001", "-v", "0")
    before = recorded(own_database)
    # the password as a module option (app_environment), the most exposed path
    result = run_module(common(app_environment=dict(own_database), expected={"database": "production"}),
                        base_env(), verbosity=4, secrets=[password])
    assert result["_status"] == "FAILED!"
    assert result["error_kind"] == "target_mismatch"
    assert '"PGPASSWORD": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"' in result["_output"]  # -vvvv showed the args
    assert f"database: expected 'production', connected to '{own_database['PGDATABASE']}'" in result["msg"]
    assert result.get("applied", []) == []
    assert recorded(own_database) == before
    assert not has_column(own_database, "fault_item", "note")


def test_refused_on_a_streaming_replica(own_cluster, own_database):
    primary, replica = own_cluster
    password = own_database["PGPASSWORD"]
    manage(base_env(own_database), "migrate", "fault", "0001", "-v", "0")
    before = recorded(own_database)
    primary.wait_replayed(replica)
    on_replica = dict(own_database, PGPORT=str(replica.port))
    assert sql(on_replica, "SELECT pg_is_in_recovery()")[0][0] is True
    assert recorded(on_replica) == before

    result = run_module(common(), base_env(on_replica), verbosity=4, secrets=[password])
    assert result["_status"] == "FAILED!", result.get("msg")
    assert result["error_kind"] == "replica"
    assert "replica" in result["msg"] and "pg_is_in_recovery" in result["msg"]
    assert str(replica.port) in result["msg"]
    assert result["target"]["in_recovery"] is True
    assert recorded(own_database) == before  # nothing applied on the primary
    assert not has_column(own_database, "fault_item", "note")
    primary.wait_replayed(replica)
    assert recorded(on_replica) == before


def test_refused_after_the_password_changed(own_cluster, own_database):
    primary, _replica = own_cluster
    old = own_database["PGPASSWORD"]
    manage(base_env(own_database), "migrate", "fault", "0001", "-v", "0")
    new = "Pw-new-" + os.urandom(8).hex()
    primary.create_role("fault_owner", new)  # ALTER ROLE ... PASSWORD
    now = dict(own_database, PGPASSWORD=new)
    before = recorded(now)

    result = run_module(common(app_environment=dict(own_database)), base_env(), verbosity=4, secrets=[old, new])
    assert result["_status"] == "FAILED!"
    assert result["error_kind"] == "db_auth"
    assert '"PGPASSWORD": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"' in result["_output"]
    assert "authentication failed for user 'fault_owner'" in result["msg"]
    assert recorded(now) == before
    assert not has_column(now, "fault_item", "note")


# -- 5. a migration fails halfway ----------------------------------------------------------------


def test_failure_halfway_reports_the_state_and_a_rerun_finishes(pg_database):
    env = base_env(pg_database)
    manage(env, "migrate", "fault", "0001", "-v", "0")

    result = run_module(common(), base_env(pg_database, FAULTPROJ_FAIL_0003="1"))
    assert result["_status"] == "FAILED!"
    assert result["error_kind"] == "migration_failed"
    assert [a["id"] for a in result["applied"]] == ["fault.0002_item_note"]
    assert result["failed_migration"]["id"] == "fault.0003_tag"
    assert result["failed_migration"]["atomic"] is True
    assert "fails on purpose" in result["failed_migration"]["error"]
    assert result["not_attempted"] == ["fault.0004_item_tag"]
    assert result["changed"] is True  # 0002 is applied for good
    # The message says where the database stands: what was applied, what failed.
    assert "fault.0003_tag" in result["msg"] and "fault.0002_item_note" in result["msg"], result["msg"]
    # A real error is not a lock timeout: not retried.
    assert result["retries_used"] == 0 and len(result["attempts"]) == 1
    # The database is as reported: 0002 applied, 0003 rolled back whole (atomic), lock released.
    assert applied_ids(pg_database) == ["fault.0001_initial", "fault.0002_item_note"]
    assert has_column(pg_database, "fault_item", "note")
    assert not has_table(pg_database, "fault_tag")
    assert advisory_holders(pg_database) == []

    fixed = run_module(common(), env)
    assert fixed["_status"] == "CHANGED", fixed.get("msg")
    assert fixed["pending_before"] == ["fault.0003_tag", "fault.0004_item_tag"]
    assert [a["id"] for a in fixed["applied"]] == ["fault.0003_tag", "fault.0004_item_tag"]
    assert applied_ids(pg_database) == ALL
    assert has_column(pg_database, "fault_item", "tag_id")
