"""Module mains of django_migration_plan / django_migrate_once, with the helper's reply mocked."""

from __future__ import annotations

import json

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils import _django_runner
from ansible_collections.safedeploy.django.plugins.modules import django_migrate_once, django_migration_plan

from tests.unit.plugins.modules.utils import run_module

SECRET = "unit-secret-pw"
TARGET = {"host": "127.0.0.1", "port": 5432, "database": "shop", "user": "app", "system_identifier": "1"}


def plan_reply(*ops, missing=None):
    return {
        "ok": True,
        "target": TARGET,
        "plan": [
            {"id": f"shop.000{i + 2}_x", "app_label": "shop", "name": f"000{i + 2}_x", "atomic": True,
             "operations": [dict(o, index=0)]}
            for i, o in enumerate(ops)
        ],
        "missing_migrations": missing or {},
        "tables": {},
    }


def add_field(**field):
    return {"type": "AddField", "description": "Add field", "table": "shop_order", "tables": ["shop_order"],
            "new_tables": [], "created_in_plan": False, "reversible": True, "reduces_to_sql": True,
            "sql": ['ALTER TABLE "shop_order" ADD COLUMN "x" integer DEFAULT 0 NOT NULL;'], "sql_error": None,
            "field": dict({"null": False, "has_default": False, "db_default": False}, **field)}


@pytest.fixture()
def helper(monkeypatch):
    calls = []

    def install(reply):
        def fake(params, action, payload, *, which, popen=None):
            calls.append((action, payload))
            return reply
        monkeypatch.setattr(_django_runner, "invoke_helper", fake)
        return calls
    return install


ARGS = {"project_path": "/srv/app", "python": "/srv/venv/bin/python"}


def test_plan_blocks_and_fails_by_default(helper):
    helper(plan_reply(add_field(has_default=True)))
    failed, result = run_module(django_migration_plan.main, ARGS)
    assert failed
    assert "exceeds max_risk=medium" in result["msg"] and "shop.0002_x" in result["msg"]
    assert result["gate"]["blocked"] is True and result["highest_risk"] == "high"


def test_plan_fail_on_block_false_reports(helper):
    calls = helper(plan_reply(add_field(has_default=True), add_field(null=True)))
    failed, result = run_module(django_migration_plan.main, dict(ARGS, fail_on_block=False, check_missing=False))
    assert not failed and result["changed"] is False
    assert result["pending"] == ["shop.0002_x", "shop.0003_x"]
    assert [m["risk"] for m in result["plan"]] == ["high", "low"]
    assert calls == [
        ("plan", {"check_missing": False, "target": None, "prechecks": False, "precheck_timeout_ms": 5000,
                  "post_migrations": []})
    ]


def test_plan_waiver_lets_it_through(helper):
    helper(plan_reply(add_field(has_default=True)))
    waiver = {"migration": "shop.0002_x", "rule": "not-null-django-default", "reason": "ok", "approved_by": "dba",
              "expires": "2999-01-01"}
    failed, result = run_module(django_migration_plan.main, dict(ARGS, waivers=[waiver]))
    assert not failed
    assert result["gate"]["blocked"] is False and result["gate"]["waived"][0]["reason"] == "ok"
    assert result["report_markdown"].count("approved by dba") == 1


def test_plan_incomplete_waiver_does_not_count(helper):
    helper(plan_reply(add_field(has_default=True)))
    waiver = {"migration": "shop.0002_x", "rule": "not-null-django-default", "reason": "ok", "expires": "soon"}
    failed, result = run_module(django_migration_plan.main, dict(ARGS, waivers=[waiver]))
    assert failed and "exceeds max_risk=medium" in result["msg"]
    assert "waiver 1 does not count: approved_by is missing" in result["msg"] and "YYYY-MM-DD" in result["msg"]
    assert result["gate"]["invalid_waivers"][0]["problems"] == [
        "approved_by is missing (who accepted the risk)", "expires must be a date YYYY-MM-DD, got 'soon'"]
    assert "Incomplete waivers (not applied)" in result["report_markdown"]


@pytest.mark.parametrize(
    "args,fragment",
    [
        ({"thresholds": {"tiny_table_rows": 5, "large_table_rows": 2}}, "tiny_table_rows must be smaller"),
        ({"precheck_timeout": 0}, "precheck_timeout must be a number of seconds above 0"),
    ],
)
def test_plan_bad_thresholds(helper, args, fragment):
    calls = helper(plan_reply())
    failed, result = run_module(django_migration_plan.main, dict(ARGS, **args))
    assert failed and fragment in result["msg"] and calls == []


def test_plan_missing_migrations(helper):
    helper(plan_reply(missing={"shop": [{"name": "0009_auto", "operations": []}]}))
    failed, result = run_module(django_migration_plan.main, ARGS)
    assert failed and "shop: 0009_auto" in result["msg"] and "makemigrations" in result["msg"]
    failed, result = run_module(django_migration_plan.main, dict(ARGS, fail_on_missing=False))
    assert not failed and result["missing_migrations"] == {"shop": ["0009_auto"]}


def test_helper_error_becomes_fail_json(helper):
    helper({"ok": False, "error_kind": "django_missing", "message": "Django is not importable in /x/python"})
    failed, result = run_module(django_migration_plan.main, ARGS)
    assert failed and result["error_kind"] == "django_missing"
    assert result["msg"].startswith("Django is not importable in /x/python") and "virtualenv" in result["msg"]


def test_virtualenv_and_python_are_exclusive(helper):
    helper(plan_reply())
    failed, result = run_module(django_migration_plan.main, dict(ARGS, virtualenv="/srv/venv"))
    assert failed and "mutually exclusive" in result["msg"]


def test_secrets_are_registered_for_masking(helper, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", SECRET)
    helper({"ok": False, "error_kind": "db_error", "message": "x"})
    seen = {}
    original = _django_runner.register_secrets

    def spy(module):
        secrets = original(module)
        seen["no_log"] = set(module.no_log_values)
        return secrets

    monkeypatch.setattr(_django_runner, "register_secrets", spy)
    run_module(django_migration_plan.main, dict(ARGS, app_environment={"DJANGO_SECRET_KEY": "k-123", "PGHOST": "h"}))
    assert {SECRET, "k-123"} <= seen["no_log"] and "h" not in seen["no_log"]


def test_migrate_nothing_pending_is_not_changed(helper):
    calls = helper({"ok": True, "changed": False, "applied": [], "pending_before": [], "failed": None,
                    "target": TARGET, "lock": {"key": 1, "waited": 2.5, "acquired": True}})
    failed, result = run_module(django_migrate_once.main, dict(ARGS, expected={"database": "shop"}))
    assert not failed and result["changed"] is False and result["applied"] == []
    action, payload = calls[0]
    assert action == "migrate"
    assert payload["expected"] == {"database": "shop"}
    assert payload["lock_timeout"] == "10s" and payload["statement_timeout"] == "0" and payload["lock_wait"] == 300
    assert payload["check_mode"] is False


def test_migrate_applied(helper):
    helper({"ok": True, "changed": True, "applied": [{"id": "shop.0002_x", "seconds": 0.1, "fake": False}],
            "pending_before": ["shop.0002_x"], "failed": None, "target": TARGET, "lock": {}})
    failed, result = run_module(django_migrate_once.main, ARGS)
    assert not failed and result["changed"] is True
    assert result["applied"] == [{"id": "shop.0002_x", "seconds": 0.1}]


def test_migrate_check_mode(helper):
    calls = helper({"ok": True, "changed": True, "would_apply": ["shop.0002_x"], "applied": [],
                    "pending_before": ["shop.0002_x"], "failed": None, "target": TARGET,
                    "lock": {"free": True}})
    failed, result = run_module(django_migrate_once.main, dict(ARGS, _ansible_check_mode=True))
    assert not failed and result["changed"] is True and result["would_apply"] == ["shop.0002_x"]
    assert calls[0][1]["check_mode"] is True


def test_migrate_half_applied_failure(helper):
    helper({"ok": False, "error_kind": "migration_failed", "changed": True,
            "message": "migration shop.0003_x failed: DataError: division by zero",
            "applied": [{"id": "shop.0002_x", "seconds": 0.2}], "pending_before": ["shop.0002_x", "shop.0003_x"],
            "failed": {"id": "shop.0003_x", "atomic": False, "error": "DataError: division by zero"},
            "not_attempted": [], "target": TARGET, "lock": {}})
    failed, result = run_module(django_migrate_once.main, ARGS)
    assert failed and result["changed"] is True
    assert result["applied"] == [{"id": "shop.0002_x", "seconds": 0.2}]
    assert result["failed_migration"]["id"] == "shop.0003_x"
    assert "division by zero" in result["msg"]


def test_migrate_lock_timeout_is_a_failure(helper):
    helper({"ok": False, "error_kind": "lock_timeout", "message": "another migration holds the lock",
            "lock": {"holders": [{"pid": 42}]}})
    failed, result = run_module(django_migrate_once.main, ARGS)
    assert failed and result["error_kind"] == "lock_timeout" and result["lock"]["holders"][0]["pid"] == 42


def test_migrate_rejects_unknown_expected_key(helper):
    helper({"ok": True})
    failed, result = run_module(django_migrate_once.main, dict(ARGS, expected={"dbname": "shop"}))
    assert failed and "dbname" in result["msg"]
    assert json.dumps(result)  # serializable
