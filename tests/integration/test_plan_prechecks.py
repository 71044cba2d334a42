"""Data pre-checks and table statistics of django_migration_plan, through real Ansible and PostgreSQL.

The checkproj project (tests/integration/projects/checkproj) has one app, ``shop``:
0001 creates shop_vendor and shop_item; each later migration needs something
from the data that is already there (no NULL, no duplicates, no orphan) or
works on a column an earlier migration of the plan adds. The tests migrate to
0001, put data in with SQL and ask the planner (prechecks: true) what would
fail. Only the helper's facts are asserted (prechecks, tables), never verdicts.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.integration.test_django_live import (
    PROJECTS,
    PYTHON,
    REPO,
    ansible,
    applied_ids,
    base_env,
    common,
    manage,
    sql,
)

pytestmark = pytest.mark.slow

CHECK = PROJECTS / "checkproj"
HELPER = REPO / "plugins" / "module_utils" / "_django_helper.py"

ITEM_COLUMNS = "(sku, code, color, size, vendor)"
VENDORS = "INSERT INTO shop_vendor (id, name, country) VALUES (1, 'acme', 'fr'), (2, 'acme', 'fr'), (3, 'bolt', 'de')"
# 3 NULL skus; codes A x3 and B x2 (2 groups); (red, M) x2 (1 group; (blue, NULL) x2 do not collide);
# vendor 99, 98, 98 match no shop_vendor row (3 orphans); vendors (acme, fr) x2 (1 group).
BAD_ITEMS = (
    f"INSERT INTO shop_item {ITEM_COLUMNS} VALUES "
    "('secret-sku-1', 'A', 'red', 'M', 1), (NULL, 'A', 'red', 'M', 99), (NULL, 'A', 'blue', NULL, 98), "
    "(NULL, 'B', 'blue', NULL, 98), ('secret-sku-2', 'B', 'green', 'S', NULL), ('secret-sku-3', 'C', 'green', 'L', 2)"
)
CLEAN_VENDORS = "INSERT INTO shop_vendor (id, name, country) VALUES (1, 'acme', 'fr'), (2, 'acme', 'de')"
CLEAN_ITEMS = (
    f"INSERT INTO shop_item {ITEM_COLUMNS} VALUES "
    "('s1', 'A', 'red', 'M', 1), ('s2', 'B', 'red', 'L', 2), ('s3', 'C', 'blue', NULL, NULL), "
    "('s4', 'D', 'blue', NULL, 1)"
)


def execute(db_env: dict, statement: str) -> None:
    with psycopg.connect(host=db_env["PGHOST"], port=db_env["PGPORT"], user=db_env["PGUSER"],
                         password=db_env["PGPASSWORD"], dbname=db_env["PGDATABASE"], autocommit=True) as conn:
        conn.execute(statement)


def at_0001(db_env: dict) -> dict:
    env = base_env(db_env)
    manage(CHECK, env, "migrate", "shop", "0001", "-v", "0")
    return env


def plan(env: dict, **extra) -> dict:
    args = common(CHECK, fail_on_block=False, fail_on_missing=False, **extra)
    result = ansible("django_migration_plan", args, env)
    assert result["_status"] == "SUCCESS", result.get("msg")
    return result


def checks_of(result: dict) -> dict[str, list[dict]]:
    """{migration id: prechecks of its operations}, only migrations that have some."""
    found = {}
    for migration in result["plan"]:
        checks = [c for op in migration["operations"] for c in op.get("prechecks", [])]
        if checks:
            found[migration["id"]] = checks
    return found


def only(checks: list[dict]) -> dict:
    assert len(checks) == 1, checks
    return checks[0]


def db_state(db_env: dict) -> dict:
    """What planning must not change: data, schema, applied migrations."""
    return {
        "items": sql(db_env, "SELECT count(*) FROM shop_item")[0][0],
        "vendors": sql(db_env, "SELECT count(*) FROM shop_vendor")[0][0],
        "constraints": sql(db_env, "SELECT count(*) FROM pg_constraint WHERE conrelid IN "
                                   "('shop_item'::regclass, 'shop_vendor'::regclass)")[0][0],
        "indexes": sql(db_env, "SELECT count(*) FROM pg_index WHERE indrelid IN "
                               "('shop_item'::regclass, 'shop_vendor'::regclass)")[0][0],
        "columns": sql(db_env, "SELECT string_agg(attname || ':' || attnotnull, ',' ORDER BY attname) "
                               "FROM pg_attribute WHERE attrelid = 'shop_item'::regclass AND attnum > 0")[0][0],
        "applied": applied_ids(db_env),
    }


def assert_no_session_left(db_env: dict) -> None:
    """No other client session holds a lock or sits in a transaction in this database."""
    locks = sql(db_env, "SELECT l.locktype, l.mode, a.state, a.query FROM pg_locks l "
                        "JOIN pg_stat_activity a ON a.pid = l.pid "
                        "WHERE a.backend_type = 'client backend' AND l.pid <> pg_backend_pid() "
                        "AND a.datname = current_database()")
    assert locks == []
    idle = sql(db_env, "SELECT pid, state FROM pg_stat_activity WHERE datname = current_database() "
                       "AND state LIKE 'idle in transaction%%'")
    assert idle == []


def test_prechecks_report_what_would_fail(pg_database):
    env = at_0001(pg_database)
    execute(pg_database, VENDORS)
    execute(pg_database, BAD_ITEMS)
    before = db_state(pg_database)

    result = plan(env, prechecks=True)
    assert result["pending"][0] == "shop.0002_item_sku_not_null"
    checks = checks_of(result)
    assert set(checks) == {"shop.0002_item_sku_not_null", "shop.0003_item_code_unique",
                           "shop.0004_item_color_size_uniq", "shop.0005_item_vendor_fk",
                           "shop.0006_vendor_unique_together", "shop.0008_item_note_not_null"}

    nulls = only(checks["shop.0002_item_sku_not_null"])
    assert {k: nulls[k] for k in ("kind", "table", "columns", "status", "found", "capped")} == {
        "kind": "nulls", "table": "shop_item", "columns": ["sku"], "status": "fail", "found": 3, "capped": False}
    assert nulls["message"] == "3 NULL value(s) in shop_item.sku: SET NOT NULL will fail"
    assert isinstance(nulls["seconds"], float) and nulls["seconds"] >= 0

    code = only(checks["shop.0003_item_code_unique"])
    assert (code["kind"], code["columns"], code["status"], code["found"]) == ("duplicates", ["code"], "fail", 2)
    assert code["message"] == "2 group(s) of duplicate values in shop_item.code: the unique constraint will fail"

    pair = only(checks["shop.0004_item_color_size_uniq"])
    assert (pair["kind"], pair["columns"], pair["status"], pair["found"]) == (
        "duplicates", ["color", "size"], "fail", 1)  # (blue, NULL) twice does not collide
    assert pair["message"].startswith("1 group(s) of duplicate values in shop_item (color, size)")

    orphans = only(checks["shop.0005_item_vendor_fk"])
    assert {k: orphans[k] for k in ("kind", "table", "columns", "ref_table", "ref_column", "status", "found")} == {
        "kind": "orphans", "table": "shop_item", "columns": ["vendor"], "ref_table": "shop_vendor",
        "ref_column": "id", "status": "fail", "found": 3}
    assert orphans["message"] == ("3 row(s) of shop_item.vendor with no match in shop_vendor.id: "
                                  "the FOREIGN KEY constraint will fail")

    together = only(checks["shop.0006_vendor_unique_together"])
    assert (together["table"], together["columns"], together["status"], together["found"]) == (
        "shop_vendor", ["name", "country"], "fail", 1)

    # 0007 adds shop_item.note: it is not in the database yet, so 0008's SET NOT NULL cannot be checked.
    skipped = only(checks["shop.0008_item_note_not_null"])
    assert (skipped["kind"], skipped["columns"], skipped["status"], skipped["found"]) == (
        "nulls", ["note"], "skipped", 0)
    assert skipped["message"] == ("nulls check on shop_item.note skipped: column shop_item.note is not in the "
                                  "database now (added or renamed earlier in this plan)")

    # Counts only: no value of the data reaches the output.
    for value in ("secret-sku", "acme", "bolt"):
        assert value not in result["_output"]

    # Planning changed nothing and left nothing behind.
    assert db_state(pg_database) == before
    assert_no_session_left(pg_database)

    # Table statistics: never analyzed, so the row count comes from the live tuples.
    items = result["tables"]["shop_item"]
    assert items["rows_source"] == "live_tuples" and items["rows"] == 6 and items["live_rows"] == 6
    assert items["writes"] >= 6 and isinstance(items["writes_per_second"], float) and items["writes_per_second"] >= 0
    assert items["write_rate_since"] and items["bytes"] > 0
    execute(pg_database, "ANALYZE shop_item")
    analyzed = plan(env)["tables"]["shop_item"]
    assert analyzed["rows_source"] == "estimate" and analyzed["rows"] == 6


def test_prechecks_pass_on_clean_data(pg_database):
    env = at_0001(pg_database)
    execute(pg_database, CLEAN_VENDORS)
    execute(pg_database, CLEAN_ITEMS)
    checks = checks_of(plan(env, prechecks=True))
    statuses = {mid: [(c["kind"], c["status"], c["found"], c["capped"]) for c in found]
                for mid, found in checks.items()}
    assert statuses == {
        "shop.0002_item_sku_not_null": [("nulls", "pass", 0, False)],
        "shop.0003_item_code_unique": [("duplicates", "pass", 0, False)],
        "shop.0004_item_color_size_uniq": [("duplicates", "pass", 0, False)],
        "shop.0005_item_vendor_fk": [("orphans", "pass", 0, False)],
        "shop.0006_vendor_unique_together": [("duplicates", "pass", 0, False)],
        "shop.0008_item_note_not_null": [("nulls", "skipped", 0, False)],
    }
    assert only(checks["shop.0002_item_sku_not_null"])["message"].startswith("no NULL in shop_item.sku")
    assert_no_session_left(pg_database)


def test_prechecks_are_opt_in_and_stats_on_empty_tables(pg_database):
    env = at_0001(pg_database)
    execute(pg_database, BAD_ITEMS)
    result = plan(env)
    assert checks_of(result) == {}
    assert all("prechecks" not in op and "_precheck_specs" not in op
               for migration in result["plan"] for op in migration["operations"])
    # never analyzed and no live tuple: unknown, not "empty"
    vendors = result["tables"]["shop_vendor"]
    assert (vendors["rows"], vendors["rows_source"], vendors["live_rows"]) == (-1, "unknown", 0)
    assert vendors["writes"] == 0 and vendors["writes_per_second"] == 0.0


def test_precheck_timeout_leaves_nothing_open(pg_database):
    env = at_0001(pg_database)
    execute(pg_database, f"INSERT INTO shop_item {ITEM_COLUMNS} "
                         "SELECT 'sku' || g, 'code' || g, 'red', NULL, NULL FROM generate_series(1, 2000000) g")
    before = db_state(pg_database)

    result = plan(env, prechecks=True, precheck_timeout=0.001)
    checks = checks_of(result)
    on_items = [c for mid, found in checks.items() for c in found if c["table"] == "shop_item"
                and c["status"] != "skipped"]
    assert [c["kind"] for c in on_items] == ["nulls", "duplicates", "duplicates", "orphans"]
    assert [c["message"] for c in on_items] == [
        "nulls check on shop_item.sku did not finish within 1 ms: unknown",
        "duplicates check on shop_item.code did not finish within 1 ms: unknown",
        "duplicates check on shop_item (color, size) did not finish within 1 ms: unknown",
        "orphans check on shop_item.vendor did not finish within 1 ms: unknown",
    ]
    for check in on_items:
        assert (check["status"], check["found"], check["capped"]) == ("timeout", 0, False), check
    # the checks after the timeouts still ran, on a working connection
    vendor = only(checks["shop.0006_vendor_unique_together"])
    assert vendor["status"] in ("pass", "timeout"), vendor
    assert only(checks["shop.0008_item_note_not_null"])["status"] == "skipped"
    assert db_state(pg_database) == before
    assert_no_session_left(pg_database)

    # never analyzed, yet 2M rows: big
    assert result["tables"]["shop_item"]["rows"] >= 1_900_000

    # With time enough the same checks finish on 2M rows.
    finished = checks_of(plan(env, prechecks=True, precheck_timeout=120))
    on_items = [c for found in finished.values() for c in found if c["table"] == "shop_item"
                and c["status"] != "skipped"]
    assert [(c["kind"], c["status"], c["found"]) for c in on_items] == [
        ("nulls", "pass", 0), ("duplicates", "pass", 0), ("duplicates", "pass", 0), ("orphans", "pass", 0)]
    assert_no_session_left(pg_database)


def test_helper_reply_has_no_private_keys(pg_database):
    """The helper's own reply (what the module receives): prechecks_ran, no walk-private key."""
    at_0001(pg_database)
    execute(pg_database, BAD_ITEMS)
    env = base_env(pg_database)

    def helper(request: dict) -> dict:
        proc = subprocess.run([PYTHON, str(HELPER)], cwd=CHECK, env=env, input=json.dumps(request),
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    request = {"action": "plan", "settings": "checkproj.settings", "check_missing": False}
    asked = helper(dict(request, prechecks=True, precheck_timeout_ms=5000))
    assert asked["ok"] is True and asked["prechecks_ran"] is True
    text = json.dumps(asked)
    assert "_precheck_specs" not in text and "secret-sku" not in text
    assert any(op.get("prechecks") for m in asked["plan"] for op in m["operations"])

    plain = helper(request)
    assert plain["prechecks_ran"] is False and "_precheck_specs" not in json.dumps(plain)
    assert not any("prechecks" in op for m in plain["plan"] for op in m["operations"])


def test_checkproj_models_match_its_migrations(pg_database):
    """The project is coherent: its models need no new migration."""
    env = base_env(pg_database)
    manage(CHECK, env, "makemigrations", "--check", "--dry-run", "shop")
    assert Path(CHECK / "shop" / "migrations" / "0008_item_note_not_null.py").exists()


def test_counts_are_capped(pg_database):
    env = at_0001(pg_database)
    execute(pg_database, f"INSERT INTO shop_item {ITEM_COLUMNS} "
                         "SELECT NULL, 'same', 'red', 'M', NULL FROM generate_series(1, 1500)")
    checks = checks_of(plan(env, prechecks=True))
    nulls = only(checks["shop.0002_item_sku_not_null"])
    assert (nulls["status"], nulls["found"], nulls["capped"]) == ("fail", 1000, True)
    assert nulls["message"] == "at least 1000 NULL value(s) in shop_item.sku: SET NOT NULL will fail"
    code = only(checks["shop.0003_item_code_unique"])
    assert (code["status"], code["found"], code["capped"]) == ("fail", 1, False)  # one group of 1500 rows


def test_earlier_data_migrations_are_named(monkeypatch):
    """A failing check names the data migrations of the plan that run before it (they may fix the data)."""
    from ansible_collections.safedeploy.django.plugins.module_utils import _django_helper as helper

    monkeypatch.setattr(helper, "_live_columns", lambda connection, tables: {"t": {"c"}, "u": {"c"}})
    monkeypatch.setattr(helper, "_run_precheck", lambda connection, spec, timeout_ms: {
        "kind": spec["kind"], "table": spec["table"], "status": "fail", "message": "1 NULL"})
    spec_t = {"kind": "nulls", "table": "t", "columns": ["c"]}
    spec_u = {"kind": "nulls", "table": "u", "columns": ["c"]}
    migrations = [
        {"id": "a.0001", "operations": [{"type": "AlterField", "_precheck_specs": [spec_t]}]},
        {"id": "a.0002", "operations": [{"type": "RunSQL", "tables": ["u"]}]},
        {"id": "a.0003", "operations": [{"type": "AlterField", "_precheck_specs": [spec_t, spec_u]}]},
        {"id": "a.0004", "operations": [{"type": "RunPython", "tables": []}]},
        {"id": "a.0005", "direction": "backwards", "operations": [{"type": "AlterField", "_precheck_specs": [spec_t]}]},
        {"id": "a.0006", "operations": [{"type": "AlterField", "_precheck_specs": [spec_t]}]},
    ]
    assert helper._plan_prechecks(None, migrations, {"prechecks": True, "precheck_timeout_ms": 10}) is True
    ops = [m["operations"][0] for m in migrations]
    assert all("_precheck_specs" not in op for op in ops)
    assert "earlier_data_migrations" not in ops[0]["prechecks"][0]
    assert "earlier_data_migrations" not in ops[2]["prechecks"][0]  # the RunSQL touched u, not t
    assert ops[2]["prechecks"][1]["earlier_data_migrations"] == ["a.0002"]
    assert ops[2]["prechecks"][1]["message"] == (
        "1 NULL (unless an earlier data migration of this plan fixes the data: a.0002)")
    assert "prechecks" not in ops[4]  # backwards: not checked
    assert ops[5]["prechecks"][0]["earlier_data_migrations"] == ["a.0004"]
