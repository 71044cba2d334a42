"""django_migration_plan and django_migrate_once through real Ansible, real PostgreSQL, real Django projects.

The projects live in tests/integration/projects/ and read the libpq variables
(PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE). The application interpreter is the
test venv's python. Every Ansible run is checked for the database password.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from ansible_collections.safedeploy.django.plugins.module_utils._django_helper import lock_key

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROJECTS = Path(__file__).resolve().parent / "projects"
BIN = Path(sys.executable).parent
ANSIBLE = str(BIN / "ansible")
ANSIBLE_PLAYBOOK = str(BIN / "ansible-playbook")
PYTHON = sys.executable  # the application's interpreter (it has Django and psycopg)

RISKY = PROJECTS / "riskyproj"
FAIL = PROJECTS / "failproj"
SLOW = PROJECTS / "slowproj"


def base_env(db_env: dict | None = None, **extra) -> dict:
    # nothing of the caller's database or test-project switches (RISKYPROJ_*, FAULTPROJ_* ...) leaks in
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "DJANGO_")) and not re.match(r"[A-Z]+PROJ_", k)}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
        ANSIBLE_LOCALHOST_WARNING="False",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
        ANSIBLE_DEPRECATION_WARNINGS="False",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    env.update(db_env or {})
    env.update(extra)
    return env


def parse_adhoc(stdout: str) -> tuple[str, dict]:
    marker = stdout.index("localhost | ")
    status = stdout[marker + len("localhost | "):].split(" ", 1)[0]
    brace = stdout.index("{", marker)
    result, _end = json.JSONDecoder().raw_decode(stdout[brace:])
    return status, result


def ansible(module: str, args: dict, env: dict, *, check: bool = False, verbose: bool = False,
            secret: str | None = None) -> dict:
    """Run one module ad hoc on localhost; return its result (with "_status" and "_output")."""
    argv = [ANSIBLE, "localhost", "-m", f"safedeploy.django.{module}", "-a", json.dumps(args)]
    if check:
        argv.append("--check")
    if verbose:
        argv.append("-vvv")
    proc = subprocess.run(argv, env=env, capture_output=True, check=False, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    secret = secret or env.get("PGPASSWORD")
    if secret:
        assert secret not in output, "the database password leaked into Ansible's output"
    status, result = parse_adhoc(proc.stdout)
    result["_status"] = status
    result["_output"] = output
    return result


def common(project: Path, **extra) -> dict:
    return dict({"project_path": str(project), "python": PYTHON}, **extra)


def manage(project: Path, env: dict, *args: str) -> str:
    proc = subprocess.run([PYTHON, "manage.py", *args], cwd=project, env=env, capture_output=True, check=False,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def sql(db_env: dict, query: str, params=()):
    with psycopg.connect(host=db_env["PGHOST"], port=db_env["PGPORT"], user=db_env["PGUSER"],
                         password=db_env["PGPASSWORD"], dbname=db_env["PGDATABASE"], autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def applied_ids(db_env: dict) -> list[str]:
    if not sql(db_env, "SELECT to_regclass('django_migrations') IS NOT NULL")[0][0]:
        return []
    return [f"{a}.{n}" for a, n in sql(db_env, "SELECT app, name FROM django_migrations ORDER BY id")]


def migrate_plan_ids(project: Path, env: dict) -> list[str]:
    """The ids `manage.py migrate --plan` prints, in its order."""
    lines = manage(project, env, "migrate", "--plan", "--no-color").splitlines()
    assert lines[0].startswith("Planned operations")
    return [line.strip() for line in lines[1:] if line and not line.startswith(" ")]


def by_id(result: dict) -> dict:
    return {m["id"]: m for m in result["plan"]}


def rules_of(migration: dict) -> dict:
    return {v["rule"]: v["risk"] for v in migration["verdicts"]}


# -- django_migration_plan -----------------------------------------------------------


def test_plan_on_a_fresh_database_follows_migrate_plan(pg_database):
    env = base_env(pg_database)
    expected_order = migrate_plan_ids(RISKY, env)
    assert "catalog.0012_alter_category_unique_together" in expected_order

    result = ansible("django_migration_plan", common(RISKY, fail_on_block=False), env)
    assert result["_status"] == "SUCCESS" and result["changed"] is False
    assert result["pending"] == expected_order
    assert [m["id"] for m in result["plan"]] == expected_order
    plan = by_id(result)
    assert result["target"]["database"] == pg_database["PGDATABASE"]
    assert result["target"]["user"] == "app_owner" and result["target"]["in_recovery"] is False
    assert result["target"]["system_identifier"].isdigit()

    # Everything is created by this plan: old code cannot be broken by it.
    initial = plan["catalog.0001_initial"]
    assert initial["risk"] == "low" and set(rules_of(initial)) == {"create-table"}
    assert any(s.startswith('CREATE TABLE "catalog_product"') for s in initial["sql"])
    assert "add-column-new-table" in rules_of(plan["catalog.0003_product_stock"])
    assert rules_of(plan["catalog.0009_remove_product_legacy_code"]) == {"drop-on-new-table": "low"}

    # The unique_together removal introspects a table that does not exist yet:
    # reported, graded from the operation, and the walk went on.
    drop_ut = plan["catalog.0012_alter_category_unique_together"]
    assert "Found wrong number (0) of constraints" in drop_ut["operations"][0]["sql_error"]
    assert "sql-depends-on-live-schema" in rules_of(drop_ut)
    assert drop_ut["sql_error"]
    assert plan["notes.0001_initial"]["operations"][0]["sql"]  # after the failing op, SQL again

    # Read-only: nothing was applied, and check mode gives the same answer.
    assert applied_ids(pg_database) == []
    checked = ansible("django_migration_plan", common(RISKY, fail_on_block=False), env, check=True)
    assert checked["changed"] is False and checked["pending"] == expected_order


def test_plan_verdicts_and_sql_on_existing_tables(pg_database):
    env = base_env(pg_database)
    manage(RISKY, env, "migrate", "catalog", "0002", "-v", "0")
    result = ansible("django_migration_plan", common(RISKY, fail_on_block=False), env)
    assert result["pending"] == migrate_plan_ids(RISKY, env)
    plan = by_id(result)
    expectations = {
        "catalog.0003_product_stock": ("high", {"not-null-django-default": "high"}),
        "catalog.0004_product_active": ("low", {"add-column-db-default": "low"}),
        "catalog.0005_product_sku_index": ("medium", {"create-index-blocking": "medium"}),
        "catalog.0006_alter_product_views": ("medium", {"alter-column-type": "medium"}),
        "catalog.0007_fill_titles": ("medium", {"run-python": "medium", "run-python-irreversible": "medium"}),
        "catalog.0008_fill_notes": ("medium", {"run-sql-irreversible": "medium", "raw-sql-data-change": "medium"}),
        "catalog.0009_remove_product_legacy_code": ("high", {"remove-field": "high"}),
        "catalog.0010_rename_product_old_title": ("high", {"rename-field": "high"}),
        "catalog.0011_alter_product_name_help_text": ("none", {"state-only": "none"}),
        # DROP CONSTRAINT of the old unique_together: catalog-only SQL, low per the risk levels.
        "catalog.0012_alter_category_unique_together": ("low", {"catalog-change": "low"}),
    }
    for mid, (risk, rules) in expectations.items():
        assert (plan[mid]["risk"], rules_of(plan[mid])) == (risk, rules), mid
    assert plan["catalog.0007_fill_titles"]["reversible"] is False
    assert plan["catalog.0003_product_stock"]["reversible"] is True
    assert result["highest_risk"] == "high"
    assert "catalog_product" in result["tables"] and result["tables"]["catalog_product"]["bytes"] > 0

    # With the table in place, the unique_together removal renders: same SQL as sqlmigrate.
    assert plan["catalog.0012_alter_category_unique_together"]["sql_error"] is None
    for mid in ("catalog.0003_product_stock", "catalog.0005_product_sku_index", "catalog.0006_alter_product_views",
                "catalog.0010_rename_product_old_title", "catalog.0012_alter_category_unique_together"):
        name = mid.split(".")[1]
        expected = [line for line in manage(RISKY, env, "sqlmigrate", "catalog", name).splitlines()
                    if line.strip() and not line.startswith("--") and line not in ("BEGIN;", "COMMIT;")]
        ours = [s for s in plan[mid]["sql"] if not s.startswith("--")]
        assert ours == expected, mid
    assert any("DROP CONSTRAINT" in s for s in plan["catalog.0012_alter_category_unique_together"]["sql"])

    # The gate, through fail_on_block (default true).
    blocked = ansible("django_migration_plan", common(RISKY), env)
    assert blocked["_status"] == "FAILED!"
    assert "exceeds max_risk=medium" in blocked["msg"]
    for mid in ("catalog.0003_product_stock", "catalog.0009_remove_product_legacy_code",
                "catalog.0010_rename_product_old_title"):
        assert mid in blocked["msg"]
    assert len(blocked["gate"]["reasons"]) == 3
    assert "| catalog.0003_product_stock | high |" in blocked["report_markdown"]


def test_plan_waivers(pg_database):
    env = base_env(pg_database)
    manage(RISKY, env, "migrate", "catalog", "0002", "-v", "0")
    waivers = [
        {"migration": "catalog.0003_product_stock", "rule": "not-null-django-default",
         "reason": "only the new worker inserts products", "approved_by": "dba", "expires": "2999-12-31"},
        {"migration": "catalog.0009_remove_product_legacy_code", "rule": "remove-field", "reason": "unused since 1.2",
         "approved_by": "dba", "expires": "2999-12-31"},
        {"migration": "catalog.0010_rename_product_old_title", "rule": "rename-field", "reason": "approved last year",
         "approved_by": "dba", "expires": "2001-01-01"},
    ]
    result = ansible("django_migration_plan", common(RISKY, waivers=waivers), env)
    assert result["_status"] == "FAILED!"
    gate = result["gate"]
    assert gate["blocked"] is True
    assert [r.split(":")[0] for r in gate["reasons"]] == ["catalog.0010_rename_product_old_title operation 0"]
    assert "waiver 3 expired on 2001-01-01" in gate["reasons"][0]
    assert sorted(w["migration"] for w in gate["waived"]) == [
        "catalog.0003_product_stock", "catalog.0009_remove_product_legacy_code"]
    assert gate["expired_waivers"] == [{"position": 3, "migration": "catalog.0010_rename_product_old_title",
                                        "rule": "rename-field", "reason": "approved last year", "approved_by": "dba",
                                        "expires": "2001-01-01"}]

    waivers[2]["expires"] = "2999-12-31"
    passed = ansible("django_migration_plan", common(RISKY, waivers=waivers), env)
    assert passed["_status"] == "SUCCESS" and passed["gate"]["blocked"] is False
    assert len(passed["gate"]["waived"]) == 3

    high = ansible("django_migration_plan", common(RISKY, max_risk="high"), env)
    assert high["_status"] == "SUCCESS" and high["gate"]["blocked"] is False

    # An incomplete waiver does not count: the gate blocks and says why.
    bad = ansible("django_migration_plan",
                  common(RISKY, max_risk="high", waivers=[{"migration": "catalog.0003_product_stock", "reason": "",
                                                           "expires": "2999-01-01"}]), env)
    assert bad["_status"] == "SUCCESS"
    assert bad["gate"]["invalid_waivers"][0]["problems"] == [
        "rule is missing (name the rule id the waiver accepts)", "reason is missing",
        "approved_by is missing (who accepted the risk)"]
    assert "Incomplete waivers (not applied)" in bad["report_markdown"]


def test_plan_reports_missing_migrations(pg_database):
    env = base_env(pg_database, RISKYPROJ_PENDING_MODEL_CHANGE="1")
    result = ansible("django_migration_plan", common(RISKY, max_risk="high"), env)
    assert result["_status"] == "FAILED!"
    assert "catalog: 0013_product_extra" in result["msg"] and "makemigrations" in result["msg"]
    assert result["missing_migrations"] == {"catalog": ["0013_product_extra"]}

    lenient = ansible("django_migration_plan", common(RISKY, max_risk="high", fail_on_missing=False), env)
    assert lenient["_status"] == "SUCCESS" and lenient["missing_migrations"] == {"catalog": ["0013_product_extra"]}

    clean = ansible("django_migration_plan", common(RISKY, max_risk="high"), base_env(pg_database))
    assert clean["_status"] == "SUCCESS" and clean["missing_migrations"] == {}


# -- django_migrate_once -------------------------------------------------------------


def test_migrate_check_mode_apply_idempotent(pg_database):
    env = base_env(pg_database)
    expected_order = migrate_plan_ids(RISKY, env)

    checked = ansible("django_migrate_once", common(RISKY), env, check=True)
    assert checked["_status"] == "CHANGED" and checked["changed"] is True
    assert checked["would_apply"] == expected_order and checked["applied"] == []
    assert checked["lock"]["free"] is True
    assert applied_ids(pg_database) == []  # check mode changed nothing

    wrong = ansible("django_migrate_once", common(RISKY, expected={"database": "production"}), env)
    assert wrong["_status"] == "FAILED!"
    assert f"database: expected 'production', connected to '{pg_database['PGDATABASE']}'" in wrong["msg"]
    assert applied_ids(pg_database) == []

    expected = {"database": pg_database["PGDATABASE"], "user": "app_owner", "host": "127.0.0.1",
                "port": int(pg_database["PGPORT"]), "system_identifier": checked["target"]["system_identifier"]}
    applied = ansible("django_migrate_once", common(RISKY, expected=expected, lock_timeout="3s"), env)
    assert applied["_status"] == "CHANGED", applied.get("msg")
    assert [a["id"] for a in applied["applied"]] == expected_order
    assert all(isinstance(a["seconds"], float) and a["seconds"] >= 0 for a in applied["applied"])
    assert applied["pending_before"] == expected_order
    assert applied["failed_migration"] is None
    assert applied["lock"]["acquired"] is True
    assert applied["lock"]["key"] == lock_key(pg_database["PGDATABASE"], "safedeploy.migrate")
    assert applied_ids(pg_database) == expected_order
    assert sql(pg_database, "SELECT count(*) FROM django_content_type")[0][0] > 0  # post_migrate ran

    again = ansible("django_migrate_once", common(RISKY, expected=expected), env)
    assert again["_status"] == "SUCCESS" and again["changed"] is False and again["applied"] == []
    checked_again = ansible("django_migrate_once", common(RISKY), env, check=True)
    assert checked_again["changed"] is False and checked_again["would_apply"] == []
    # and nothing is left pending for the planner either
    plan = ansible("django_migration_plan", common(RISKY), env)
    assert plan["pending"] == [] and plan["highest_risk"] == "none"


def test_migrate_failure_midway_is_reported(pg_database):
    env = base_env(pg_database)
    result = ansible("django_migrate_once", common(FAIL), env)
    assert result["_status"] == "FAILED!"
    assert [a["id"] for a in result["applied"]] == ["ledger.0001_initial"]
    assert result["failed_migration"]["id"] == "ledger.0002_entries"
    assert result["failed_migration"]["atomic"] is False
    assert "division by zero" in result["failed_migration"]["error"]
    assert result["not_attempted"] == ["ledger.0003_account_note"]
    assert "Applied before the failure: ledger.0001_initial" in result["msg"]
    assert "not atomic" in result["msg"]
    # The database really is half-migrated: 0002's first operation stayed, 0002 is not recorded.
    assert applied_ids(pg_database) == ["ledger.0001_initial"]
    assert sql(pg_database, "SELECT to_regclass('ledger_entry') IS NOT NULL")[0][0] is True
    # and the lock was released
    key = lock_key(pg_database["PGDATABASE"], "safedeploy.migrate")
    assert sql(pg_database, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0] == 0
    assert isinstance(key, int)


def test_migrate_concurrent_runs_apply_once(pg_database):
    env = base_env(pg_database)
    argv = [ANSIBLE, "localhost", "-m", "safedeploy.django.django_migrate_once",
            "-a", json.dumps(common(SLOW, lock_wait=120))]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _run in range(4)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert pg_database["PGPASSWORD"] not in stdout + stderr
        results.append(parse_adhoc(stdout))
    statuses = sorted(status for status, _result in results)
    assert statuses == ["CHANGED", "SUCCESS", "SUCCESS", "SUCCESS"], results
    winner = next(r for s, r in results if s == "CHANGED")
    assert [a["id"] for a in winner["applied"]] == ["slow.0001_initial", "slow.0002_thing_seed"]
    assert winner["applied"][0]["seconds"] >= 3  # the pg_sleep(3) migration
    for status, result in results:
        if status == "SUCCESS":
            assert result["changed"] is False and result["applied"] == [] and result["pending_before"] == []
    # The others queued on the lock while the winner worked.
    assert max(r["lock"]["waited"] for _status, r in results) > 1
    assert sql(pg_database, "SELECT count(*) FROM slow_thing")[0][0] == 1  # the seed ran once
    assert applied_ids(pg_database) == ["slow.0001_initial", "slow.0002_thing_seed"]


def test_migrate_lock_held_elsewhere_names_the_holder(pg_database):
    env = base_env(pg_database)
    key = lock_key(pg_database["PGDATABASE"], "deploy-lock")
    with psycopg.connect(host=pg_database["PGHOST"], port=pg_database["PGPORT"], user=pg_database["PGUSER"],
                         password=pg_database["PGPASSWORD"], dbname=pg_database["PGDATABASE"], autocommit=True,
                         application_name="other-deploy-holder") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [key])
        holder_pid = holder.info.backend_pid

        checked = ansible("django_migrate_once", common(SLOW, lock_name="deploy-lock"), env, check=True)
        assert checked["_status"] == "CHANGED"
        assert checked["lock"]["free"] is False
        assert checked["lock"]["holders"][0]["pid"] == holder_pid

        started = time.monotonic()
        result = ansible("django_migrate_once", common(SLOW, lock_name="deploy-lock", lock_wait=2), env)
        assert time.monotonic() - started >= 2
        assert result["_status"] == "FAILED!"
        assert result["error_kind"] == "lock_timeout"
        assert f"pid {holder_pid}" in result["msg"] and "other-deploy-holder" in result["msg"]
        assert applied_ids(pg_database) == []
        # A different lock name does not wait for it.
        other = ansible("django_migrate_once", common(SLOW, lock_wait=0), env)
        assert other["_status"] == "CHANGED"


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,fragment",
    [
        ({"project_path": "/nonexistent/project", "python": PYTHON},
         "project_path /nonexistent/project does not exist or is not a directory"),
        ({"project_path": str(PROJECTS), "python": PYTHON}, "has no manage.py"),
        ({"project_path": str(RISKY), "python": "/nonexistent/bin/python"},
         "interpreter /nonexistent/bin/python does not exist"),
        ({"project_path": str(RISKY), "python": "/bin/true"}, "without answering the Django helper"),
        ({"project_path": str(RISKY), "virtualenv": "/tmp"}, "virtualenv /tmp has no bin/python"),
        ({"project_path": str(RISKY), "python": PYTHON, "settings": "nosuch.settings"},
         "cannot import settings module 'nosuch.settings'"),
        ({"project_path": str(RISKY), "python": PYTHON, "database": "replica"},
         "database alias 'replica' is not in settings.DATABASES"),
        ({"project_path": str(RISKY), "python": PYTHON, "no_such_option": 1}, "Unsupported parameters"),
    ],
    ids=["missing-dir", "no-manage-py", "missing-python", "not-python", "bad-venv", "bad-settings", "bad-alias",
         "unknown-arg"],
)
def test_bad_input_messages(pg_database, args, fragment):
    for module in ("django_migration_plan", "django_migrate_once"):
        result = ansible(module, args, base_env(pg_database))
        assert result["_status"] == "FAILED!"
        assert fragment in result["msg"], result["msg"]
    assert applied_ids(pg_database) == []


def test_python_without_django(pg_database, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    result = ansible("django_migration_plan", {"project_path": str(RISKY), "virtualenv": str(venv)},
                     base_env(pg_database))
    assert result["_status"] == "FAILED!" and result["error_kind"] == "django_missing"
    assert f"Django is not importable in {venv}/bin/python" in result["msg"]


def test_unreachable_database(pg_database):
    from devtools.pgcluster import free_port

    port = free_port()  # nothing listens there
    env = base_env(dict(pg_database, PGPORT=str(port)))
    for module in ("django_migration_plan", "django_migrate_once"):
        result = ansible(module, common(RISKY), env)
        assert result["_status"] == "FAILED!"
        assert result["error_kind"] == "db_unreachable"
        assert f"cannot reach PostgreSQL at 127.0.0.1:{port}" in result["msg"]
        assert f"database '{pg_database['PGDATABASE']}', user 'app_owner'" in result["msg"]


def test_wrong_password_is_named_but_never_shown(pg_database):
    wrong = "Wrong-" + pg_database["PGPASSWORD"][::-1]
    env = base_env(dict(pg_database, PGPASSWORD=wrong))
    for module in ("django_migration_plan", "django_migrate_once"):
        result = ansible(module, common(RISKY), env, verbose=True, secret=wrong)
        assert result["_status"] == "FAILED!"
        assert result["error_kind"] == "db_auth"
        assert "authentication failed for user 'app_owner'" in result["msg"]
        assert wrong not in result["_output"]
        assert pg_database["PGPASSWORD"] not in result["_output"]


def test_missing_database(pg_database):
    env = base_env(dict(pg_database, PGDATABASE="no_such_db"))
    result = ansible("django_migration_plan", common(RISKY), env)
    assert result["_status"] == "FAILED!" and result["error_kind"] == "db_missing"
    assert "the database 'no_such_db' does not exist" in result["msg"]


# -- secrets -----------------------------------------------------------------------------


def test_password_never_in_output_with_vvv(pg_database, tmp_path):
    password = pg_database["PGPASSWORD"]
    # 1) password in the environment Ansible inherits
    result = ansible("django_migration_plan", common(RISKY, fail_on_block=False), base_env(pg_database),
                     verbose=True)
    assert result["_status"] == "SUCCESS" and "invocation" in result["_output"]
    assert password not in json.dumps(result)

    # 2) password passed as a module option (app_environment), in a playbook, at -vvv
    no_pg = base_env()
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [
            {"name": "plan", "safedeploy.django.django_migration_plan": common(
                RISKY, fail_on_block=False, app_environment=dict(pg_database)), "register": "plan"},
            {"name": "migrate", "safedeploy.django.django_migrate_once": common(
                RISKY, app_environment=dict(pg_database))},
            {"name": "show", "ansible.builtin.debug": {"var": "plan.target"}},
        ],
    }]))
    proc = subprocess.run([ANSIBLE_PLAYBOOK, "-vvv", "-i", "localhost,", "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
                          env=no_pg, capture_output=True, check=False, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "changed=1" in output  # the migrate task ran for real
    assert password not in output
    assert pg_database["PGDATABASE"] in output  # non-secret values are not masked
