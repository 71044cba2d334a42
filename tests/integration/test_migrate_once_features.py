"""django_migrate_once: retries on lock_timeout, blockers, INVALID indexes, phases, verification, plan digest, audit.

Through the real module (``ansible localhost -m safedeploy.django.django_migrate_once``), real PostgreSQL
and the phaseproj test project (tests/integration/projects/phaseproj):

- ``phases``: 0001 initial, 0002 AddField (pre), 0003 RemoveField (``safedeploy_phase = "post"``),
  0004 AddField (pre, but it depends on 0003);
- ``indexed`` (only with PHASEPROJ_INDEXED=1): 0002 is a non-atomic ``CREATE UNIQUE INDEX CONCURRENTLY``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
from ansible_collections.safedeploy.django.plugins.module_utils import _django_runner

from tests.integration.test_django_live import (
    ANSIBLE,
    PROJECTS,
    SLOW,
    ansible,
    applied_ids,
    base_env,
    common,
    manage,
    sql,
)

pytestmark = pytest.mark.slow

PHASE = PROJECTS / "phaseproj"
P1, P2, P3, P4 = (
    "phases.0001_initial",
    "phases.0002_widget_color",
    "phases.0003_remove_widget_legacy",
    "phases.0004_widget_size",
)
I1, I2 = "indexed.0001_initial", "indexed.0002_item_code_unique"
INDEX = "indexed_item_code_uniq"


def connect(db_env: dict, **kwargs):
    return psycopg.connect(host=db_env["PGHOST"], port=db_env["PGPORT"], user=db_env["PGUSER"],
                           password=db_env["PGPASSWORD"], dbname=db_env["PGDATABASE"], **kwargs)


@contextlib.contextmanager
def blocker(db_env: dict, statements: list[str], hold: float, name: str = "feature-blocker"):
    """A session that runs ``statements`` in an open transaction and rolls back after ``hold`` seconds, or
    when the block ends, whichever comes first.

    Yields (pid, thread); the transaction is open when the block starts.
    """
    ready, release = threading.Event(), threading.Event()
    state: dict = {}

    def run():
        with connect(db_env, application_name=name) as conn:
            state["pid"] = conn.info.backend_pid
            for statement in statements:
                conn.execute(statement)
            ready.set()
            release.wait(hold)
            conn.rollback()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "the blocker did not start"
    try:
        yield state["pid"], thread
    finally:
        release.set()
        thread.join(10)


def execute(db_env: dict, statement: str) -> None:
    with connect(db_env, autocommit=True) as conn:
        conn.execute(statement)


def invalid_indexes(db_env: dict) -> list[str]:
    return [r[0] for r in sql(db_env, "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                      "WHERE NOT i.indisvalid ORDER BY 1")]


# -- retries on lock_timeout, blockers named ------------------------------------------------------


def test_lock_timeout_is_retried_and_the_blocker_named(pg_database):
    env = base_env(pg_database)
    manage(PHASE, env, "migrate", "phases", "0001", "-v", "0")
    statements = ["LOCK TABLE phases_widget IN ACCESS SHARE MODE"]
    started = time.monotonic()
    with blocker(pg_database, statements, hold=3.0) as (pid, _thread):
        result = ansible("django_migrate_once",
                         common(PHASE, lock_timeout="500ms", retries=5, retry_delay=0.5), env)
    assert result["_status"] == "CHANGED", result.get("msg")
    assert [a["id"] for a in result["applied"]] == [P2, P3, P4]
    assert applied_ids(pg_database) == [P1, P2, P3, P4]
    assert time.monotonic() - started >= 3  # it really waited for the blocker to go away

    attempts = result["attempts"]
    assert len(attempts) > 1 and result["retries_used"] == len(attempts) - 1
    assert attempts[0]["failed"]["id"] == P2 and attempts[0]["failed"]["sqlstate"] == "55P03"
    assert attempts[0]["applied"] == [] and attempts[0]["backoff_seconds"] > 0
    assert attempts[-1]["failed"] is None and attempts[-1]["applied"] == [P2, P3, P4]
    assert pid in attempts[0]["blockers"]

    seen = {b["pid"]: b for b in result["blockers"]}
    assert pid in seen
    mine = seen[pid]
    assert mine["application_name"] == "feature-blocker" and mine["user"] == "app_owner"
    assert mine["state"] == "idle in transaction" and mine["seen_at"] == 1
    assert mine["query"] == "LOCK TABLE phases_widget IN ACCESS SHARE MODE"
    assert mine["xact_age_seconds"] >= 0
    assert result["verification"]["ok"] is True and result["failed_migration"] is None


def test_no_retries_fails_fast_and_names_the_blocker(pg_database):
    env = base_env(pg_database)
    manage(PHASE, env, "migrate", "phases", "0001", "-v", "0")
    # The blocker's last query carries the database password: it must never show.
    statements = ["SELECT 1 AS one",
                  f"SELECT 'secret {pg_database['PGPASSWORD']}' AS x, * FROM phases_widget  \n  LIMIT   1"]
    with blocker(pg_database, statements, hold=20.0, name="slow-report") as (pid, _thread):
        started = time.monotonic()
        result = ansible("django_migrate_once", common(PHASE, lock_timeout="500ms", retries=0), env)
        elapsed = time.monotonic() - started
    assert result["_status"] == "FAILED!"
    assert elapsed < 15
    assert result["error_kind"] == "migration_failed"
    assert result["applied"] == [] and result["failed_migration"]["id"] == P2
    assert result["failed_migration"]["sqlstate"] == "55P03"
    assert result["not_attempted"] == [P3, P4]
    assert len(result["attempts"]) == 1 and result["retries_used"] == 0
    assert f"pid {pid}" in result["msg"] and "slow-report" in result["msg"]
    assert "lock_timeout=500ms" in result["msg"] and "raise lock_timeout or retries" in result["msg"]
    query = next(b["query"] for b in result["blockers"] if b["pid"] == pid)
    assert query == "SELECT 'secret ********' AS x, * FROM phases_widget LIMIT 1"
    assert pg_database["PGPASSWORD"] not in json.dumps(result)
    assert applied_ids(pg_database) == [P1]
    assert sql(pg_database, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0] == 0


def test_statement_timeout_is_not_retried(pg_database):
    env = base_env(pg_database)
    result = ansible("django_migrate_once", common(SLOW, statement_timeout="1s", retries=3, retry_delay=0.1), env)
    assert result["_status"] == "FAILED!" and result["error_kind"] == "migration_failed"
    assert result["failed_migration"]["id"] == "slow.0001_initial"
    assert result["failed_migration"]["sqlstate"] == "57014"
    assert len(result["attempts"]) == 1 and result["retries_used"] == 0
    assert "statement_timeout=1s (not retried)" in result["msg"]
    assert applied_ids(pg_database) == []


# -- phases -----------------------------------------------------------------------------------------------


def test_phases_pre_defers_what_depends_on_post_then_post_applies_the_rest(pg_database):
    env = base_env(pg_database)
    bad = ansible("django_migrate_once", common(PHASE, phase="pre", post_migrations=["phases.0009_nope"]), env)
    assert bad["_status"] == "FAILED!" and bad["error_kind"] == "bad_phase"
    assert "'phases.0009_nope'" in bad["msg"] and "not a migration of this project" in bad["msg"]
    assert applied_ids(pg_database) == []

    checked = ansible("django_migrate_once", common(PHASE, phase="pre"), env, check=True)
    assert checked["would_apply"] == [P1, P2] and checked["pending_before"] == [P1, P2, P3, P4]
    assert [d["id"] for d in checked["deferred"]] == [P4] and checked["post_pending"] == [P3]

    pre = ansible("django_migrate_once", common(PHASE, phase="pre"), env)
    assert pre["_status"] == "CHANGED", pre.get("msg")
    assert [a["id"] for a in pre["applied"]] == [P1, P2]
    assert pre["phase"] == "pre" and pre["post_pending"] == [P3]
    reason = f"depends on the post-deploy migration {P3}: it runs in phase post"
    assert pre["deferred"] == [{"id": P4, "reason": reason}]
    assert pre["verification"] == {"ok": True, "pending_after": [], "invalid_indexes": [], "checks": []}
    assert applied_ids(pg_database) == [P1, P2]

    again = ansible("django_migrate_once", common(PHASE, phase="pre"), env)
    assert again["_status"] == "SUCCESS" and again["applied"] == [] and again["pending_before"] == [P3, P4]

    post_check = ansible("django_migrate_once", common(PHASE, phase="post"), env, check=True)
    assert post_check["would_apply"] == [P3, P4] and post_check["deferred"] == []
    post = ansible("django_migrate_once", common(PHASE, phase="post"), env)
    assert post["_status"] == "CHANGED", post.get("msg")
    assert [a["id"] for a in post["applied"]] == [P3, P4]
    assert applied_ids(pg_database) == [P1, P2, P3, P4]
    columns = {r[0] for r in sql(pg_database, "SELECT column_name FROM information_schema.columns "
                                              "WHERE table_name = 'phases_widget'")}
    assert columns == {"id", "name", "color", "size"}


def test_post_migrations_option_moves_a_migration_to_phase_post(pg_database):
    env = base_env(pg_database)
    result = ansible("django_migrate_once", common(PHASE, phase="pre", post_migrations=[P2]), env)
    assert result["_status"] == "CHANGED", result.get("msg")
    assert [a["id"] for a in result["applied"]] == [P1]
    assert result["post_pending"] == [P2, P3]
    assert result["deferred"] == [{"id": P4, "reason": f"depends on the post-deploy migration {P3}: it runs in "
                                                       "phase post"}]
    assert applied_ids(pg_database) == [P1]


# -- verification -------------------------------------------------------------------------------------


def test_verification_checks_pass_or_fail_the_module(pg_database):
    env = base_env(pg_database)
    checks = [
        {"name": "no widgets yet", "sql": "SELECT count(*) FROM phases_widget", "expect": 0},
        {"name": "numeric", "sql": "SELECT 1.50::numeric", "expect": "1.5"},
        {"name": "no row", "sql": "SELECT 1 WHERE false", "expect": None},
        {"name": "text", "sql": "SELECT column_default FROM information_schema.columns "
                                "WHERE table_name = 'phases_widget' AND column_name = 'size'", "expect": None},
    ]
    checked = ansible("django_migrate_once", common(PHASE, checks=checks), env, check=True)
    assert [c["status"] for c in checked["verification"]["checks"]] == ["skipped"] * 4
    assert applied_ids(pg_database) == []

    ok = ansible("django_migrate_once", common(PHASE, phase="pre", checks=checks), env)
    assert ok["_status"] == "CHANGED", ok.get("msg")
    verification = ok["verification"]
    assert verification["ok"] is True
    assert [(c["name"], c["status"], c["got"]) for c in verification["checks"]] == [
        ("no widgets yet", "pass", 0), ("numeric", "pass", "1.50"), ("no row", "pass", None), ("text", "pass", None)]

    failing = checks + [
        {"name": "the answer", "sql": "SELECT 41 + 1", "expect": 43},
        {"name": "read only", "sql": "DELETE FROM phases_widget", "expect": 0},
    ]
    bad = ansible("django_migrate_once", common(PHASE, phase="post", checks=failing, check_timeout=5), env)
    assert bad["_status"] == "FAILED!"
    assert bad["error_kind"] == "verification_failed"
    assert "check 'the answer' expected 43, got 42" in bad["msg"]
    assert "check 'read only'" in bad["msg"] and "read-only transaction" in bad["msg"]
    assert "Applied: phases.0003_remove_widget_legacy, phases.0004_widget_size" in bad["msg"]
    # what was applied is still reported (and really applied)
    assert [a["id"] for a in bad["applied"]] == [P3, P4] and bad["changed"] is True
    assert applied_ids(pg_database) == [P1, P2, P3, P4]
    statuses = {c["name"]: c["status"] for c in bad["verification"]["checks"]}
    assert statuses == {"no widgets yet": "pass", "numeric": "pass", "no row": "pass", "text": "pass",
                        "the answer": "fail", "read only": "error"}
    assert bad["verification"]["ok"] is False and bad["audit"]["outcome"] == "verification_failed"

    # nothing pending: the checks still run, and still fail the module
    again = ansible("django_migrate_once", common(PHASE, checks=failing[-2:-1]), env)
    assert again["_status"] == "FAILED!" and again["changed"] is False and again["applied"] == []


# -- plan digest ----------------------------------------------------------------------------------------


def test_plan_digest_is_the_planners_and_a_changed_plan_is_refused(pg_database):
    env = base_env(pg_database)
    check_all = ansible("django_migrate_once", common(PHASE), env, check=True)
    check_pre = ansible("django_migrate_once", common(PHASE, phase="pre"), env, check=True)
    digest_all, digest_pre = check_all["plan_digest"], check_pre["plan_digest"]
    assert len(digest_all) == 64 and digest_all != digest_pre

    # The planner's helper reply carries the same digests (the plan module passes them on, see below).
    params = dict(common(PHASE), database="default", app_environment=dict(pg_database))
    reply = _django_runner.invoke_helper(params, "plan", {"check_missing": False}, which=lambda name: None)
    assert reply["ok"] is True, reply
    assert reply["plan_digest"] == digest_all
    assert reply["plan_digests"] == {"all": digest_all, "pre": digest_pre}
    assert [m["phase"] for m in reply["plan"]] == ["pre", "pre", "post", "pre"]

    # A plan other than the approved one: refused before any change.
    wrong = "0" * 64
    refused = ansible("django_migrate_once", common(PHASE, expected_plan_digest=wrong), env)
    assert refused["_status"] == "FAILED!" and refused["error_kind"] == "plan_changed"
    assert wrong in refused["msg"] and digest_all in refused["msg"] and "re-run the plan" in refused["msg"]
    assert refused["plan_digest"] == digest_all and refused["expected_plan_digest"] == wrong
    assert refused["audit"]["outcome"] == "refused"
    assert applied_ids(pg_database) == []
    refused_check = ansible("django_migrate_once", common(PHASE, expected_plan_digest=wrong), env, check=True)
    assert refused_check["_status"] == "FAILED!" and refused_check["error_kind"] == "plan_changed"

    # The approved pre plan goes through; afterwards the rest has another digest.
    pre = ansible("django_migrate_once", common(PHASE, phase="pre", expected_plan_digest=digest_pre.upper()), env)
    assert pre["_status"] == "CHANGED", pre.get("msg")
    assert pre["plan_digest"] == digest_pre and [a["id"] for a in pre["applied"]] == [P1, P2]
    stale = ansible("django_migrate_once", common(PHASE, expected_plan_digest=digest_all), env)
    assert stale["_status"] == "FAILED!" and stale["error_kind"] == "plan_changed"
    assert applied_ids(pg_database) == [P1, P2]

    plan = ansible("django_migration_plan", common(PHASE, max_risk="high", fail_on_block=False), env)
    assert plan["_status"] == "SUCCESS"
    rest = ansible("django_migrate_once", common(PHASE), env, check=True)["plan_digest"]
    assert plan["plan_digest"] == rest


# -- audit ------------------------------------------------------------------------------------------------


def test_audit_log_one_private_json_line_per_run(pg_database, tmp_path):
    env = base_env(pg_database)
    password = pg_database["PGPASSWORD"]
    log = tmp_path / "audit" / "deep" / "migrations.log"
    context = {"controller_user": "alice", "awx_job_id": 4242, "awx_job_template": "deploy shop",
               "release": "2.4.0", "note": f"typed by mistake: {password}"}
    args = common(PHASE, phase="pre", audit_log=str(log), audit_context=context)

    checked = ansible("django_migrate_once", args, env, check=True)
    assert checked["audit"]["outcome"] == "check_mode" and not log.exists()  # check mode writes nothing

    first = ansible("django_migrate_once", args, env)
    assert first["_status"] == "CHANGED", first.get("msg")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "audit").stat().st_mode) == 0o700
    second = ansible("django_migrate_once", args, env)
    assert second["_status"] == "SUCCESS"
    refused = ansible("django_migrate_once", dict(args, expected_plan_digest="f" * 64), env)
    assert refused["_status"] == "FAILED!"
    failed = ansible("django_migrate_once", dict(args, expected={"database": "production"}), env)
    assert failed["_status"] == "FAILED!" and failed["error_kind"] == "target_mismatch"

    text = log.read_text()
    assert password not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == 4
    assert [r["outcome"] for r in records] == ["applied", "nothing_to_do", "refused", "refused"]
    one = records[0]
    assert one["context"]["controller_user"] == "alice" and one["context"]["awx_job_id"] == 4242
    assert one["context"]["note"] == "typed by mistake: ********"
    assert one["phase"] == "pre" and one["plan_digest"] == first["plan_digest"]
    assert [a["id"] for a in one["applied"]] == [P1, P2] and one["pending_before"] == [P1, P2, P3, P4]
    assert one["target"]["database"] == pg_database["PGDATABASE"] and "password" not in json.dumps(one["target"])
    assert one["lock"]["name"] == "safedeploy.migrate" and one["lock"]["waited"] >= 0
    assert one["verification"]["ok"] is True and one["error"] is None
    assert one["host"] and one["remote_user"] and one["time"].endswith("+00:00")
    assert one["retries_used"] == 0 and len(one["attempts"]) == 1 and one["blockers"] == []
    assert records[2]["error"].startswith("refusing to migrate: the pending plan's digest")
    assert "database: expected 'production'" in records[3]["error"]
    assert first["audit"] == one  # returned as written

    # Existing permissions are kept, never loosened nor changed; a symlink is refused before any change.
    log.chmod(0o640)
    ansible("django_migrate_once", args, env)
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    link = tmp_path / "link.log"
    link.symlink_to(log)
    before = log.read_text()
    refused_link = ansible("django_migrate_once", common(PHASE, phase="post", audit_log=str(link)), env)
    assert refused_link["_status"] == "FAILED!" and refused_link["error_kind"] == "audit_log"
    assert "symlink" in refused_link["msg"] and "Nothing was migrated" in refused_link["msg"]
    assert log.read_text() == before and applied_ids(pg_database) == [P1, P2]


# -- INVALID indexes ------------------------------------------------------------------------------------


def test_invalid_index_of_a_failed_concurrent_build_is_dropped_on_rerun(pg_database):
    env = base_env(pg_database, PHASEPROJ_INDEXED="1")
    manage(PHASE, env, "migrate", "indexed", "0001", "-v", "0")
    execute(pg_database, "INSERT INTO indexed_item (code) VALUES ('a'), ('a'), ('b')")

    failed = ansible("django_migrate_once", common(PHASE, phase="pre"), env)
    assert failed["_status"] == "FAILED!"
    assert failed["error_kind"] == "migration_failed"
    assert failed["failed_migration"]["id"] == I2 and failed["failed_migration"]["atomic"] is False
    assert failed["failed_migration"]["sqlstate"] == "23505"  # unique_violation: not retried
    assert len(failed["attempts"]) == 1
    assert invalid_indexes(pg_database) == [INDEX]
    assert failed["verification"]["invalid_indexes"] == [INDEX]
    assert I2 not in applied_ids(pg_database)

    # Fix the data and run again: the leftover INVALID index is dropped before migrating.
    execute(pg_database, "DELETE FROM indexed_item WHERE id = (SELECT max(id) FROM indexed_item WHERE code = 'a')")
    checked = ansible("django_migrate_once", common(PHASE, phase="pre"), env, check=True)
    assert checked["verification"]["invalid_indexes"] == [INDEX] and invalid_indexes(pg_database) == [INDEX]
    rerun = ansible("django_migrate_once", common(PHASE, phase="pre"), env)
    assert rerun["_status"] == "CHANGED", rerun.get("msg")
    assert rerun["attempts"][0]["invalid_indexes_dropped"] == [INDEX]
    assert I2 in [a["id"] for a in rerun["applied"]]
    assert rerun["verification"]["ok"] is True and rerun["verification"]["invalid_indexes"] == []
    assert invalid_indexes(pg_database) == []
    assert sql(pg_database, "SELECT indisunique FROM pg_index WHERE indexrelid = %s::regclass", [INDEX]) == [(True,)]


def test_concurrent_build_behind_a_writer_retries_and_drops_its_invalid_index(pg_database):
    """CREATE INDEX CONCURRENTLY waits for the table's writers after it created the (INVALID) index: when
    lock_timeout fires there, the index stays INVALID. The retry drops it first, then builds it again."""
    env = base_env(pg_database, PHASEPROJ_INDEXED="1")
    manage(PHASE, env, "migrate", "indexed", "0001", "-v", "0")
    manage(PHASE, env, "migrate", "phases", "-v", "0")
    statements = ["INSERT INTO indexed_item (code) VALUES ('w')"]
    with blocker(pg_database, statements, hold=3.0, name="busy-writer") as (pid, _thread):
        result = ansible("django_migrate_once", common(PHASE, lock_timeout="500ms", retries=6, retry_delay=0.5), env)
    assert result["_status"] == "CHANGED", result.get("msg")
    assert [a["id"] for a in result["applied"]] == [I2]
    attempts = result["attempts"]
    assert attempts[0]["failed"]["id"] == I2 and attempts[0]["failed"]["sqlstate"] == "55P03"
    dropped = [name for a in attempts for name in a["invalid_indexes_dropped"]]
    assert dropped == [INDEX]
    assert pid in {b["pid"] for b in result["blockers"]}
    assert result["verification"]["ok"] is True
    assert invalid_indexes(pg_database) == []
    assert applied_ids(pg_database)[-1] == I2


def test_runner_killed_mid_statement_is_noticed_by_the_server(pg_database):
    """client_connection_check_interval is set on the migrating session (PostgreSQL >= 14): when the helper is
    killed with -9 while its statement waits for a lock, the server ends that backend within about a second
    instead of when the lock is finally granted."""
    if sql(pg_database, "SELECT current_setting('server_version_num')::int")[0][0] < 140000:
        pytest.skip("client_connection_check_interval needs PostgreSQL 14")
    env = base_env(pg_database)
    manage(PHASE, env, "migrate", "phases", "0001", "-v", "0")
    statements = ["LOCK TABLE phases_widget IN ACCESS SHARE MODE"]
    with blocker(pg_database, statements, hold=15.0) as (_pid, thread):
        argv = [ANSIBLE, "localhost", "-m", "safedeploy.django.django_migrate_once",
                "-a", json.dumps(common(PHASE, lock_timeout="0", retries=0))]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waiting, helper = [], []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (waiting and helper):
            time.sleep(0.1)
            waiting = sql(pg_database, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                       "AND wait_event_type = 'Lock' AND query LIKE 'ALTER TABLE%%phases_widget%%'")
            # the helper names its lock session "safedeploy.migrate <host> pid <its pid>"
            helper = sql(pg_database, "SELECT application_name FROM pg_stat_activity WHERE datname = "
                                      "current_database() AND application_name LIKE 'safedeploy.migrate %%'")
        assert waiting and helper, "the migration never waited for the lock"
        helper_pid = int(helper[0][0].rsplit(" pid ", 1)[1])
        os.kill(helper_pid, signal.SIGKILL)  # only the helper this test started
        proc.communicate(timeout=60)
        migrating = waiting[0][0]
        gone = time.monotonic() + 5
        while time.monotonic() < gone and sql(pg_database, "SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                              [migrating]):
            time.sleep(0.1)
        assert thread.is_alive()  # the blocker still holds its lock: only the client check ended the backend
        assert not sql(pg_database, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [migrating])
    assert applied_ids(pg_database) == [P1]


def test_phaseproj_has_no_missing_migrations(pg_database):
    env = base_env(pg_database, PHASEPROJ_INDEXED="1")
    out = manage(PHASE, env, "makemigrations", "--check", "--dry-run")
    assert "No changes detected" in out
    assert Path(PHASE / "phases" / "migrations" / "0003_remove_widget_legacy.py").read_text().count("post") >= 1
