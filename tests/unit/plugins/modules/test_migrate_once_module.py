"""django_migrate_once's own logic, with the helper mocked: options, validation, results, the audit record."""

from __future__ import annotations

import json
import os
import stat

import pytest
from ansible.module_utils import basic
from ansible_collections.safedeploy.django.plugins.module_utils import _audit, _django_runner
from ansible_collections.safedeploy.django.plugins.modules import django_migrate_once

from tests.unit.plugins.modules.utils import run_module

SECRET = "unit-secret-pw-42"
ARGS = {"project_path": "/srv/app", "python": "/srv/venv/bin/python"}
TARGET = {"host": "127.0.0.1", "port": 5432, "database": "shop", "user": "app", "system_identifier": "1"}
DIGEST = "ab" * 32


def ok_reply(**extra):
    reply = {
        "ok": True, "changed": True, "phase": "all", "plan_digest": DIGEST, "target": TARGET,
        "lock": {"key": 1, "name": "safedeploy.migrate", "waited": 0.5, "acquired": True},
        "pending_before": ["shop.0002_x"], "applied": [{"id": "shop.0002_x", "seconds": 0.1, "attempt": 2}],
        "attempts": [{"attempt": 1, "failed": {"id": "shop.0002_x", "sqlstate": "55P03"}},
                     {"attempt": 2, "failed": None}],
        "retries_used": 1, "deferred": [], "post_pending": [], "failed": None,
        "blockers": [{"pid": 7, "query": "LOCK TABLE shop_order"}],
        "verification": {"ok": True, "pending_after": [], "invalid_indexes": [],
                         "checks": [{"name": "c", "status": "pass", "got": 1, "expect": 1}]},
    }
    reply.update(extra)
    return reply


@pytest.fixture()
def helper(monkeypatch):
    calls = []

    def install(reply):
        def fake(params, action, payload, *, which, popen=None):
            calls.append((action, payload))
            if isinstance(reply, Exception):
                raise reply
            return reply
        monkeypatch.setattr(_django_runner, "invoke_helper", fake)
        return calls
    return install


@pytest.fixture()
def warnings(monkeypatch):
    seen = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, msg: seen.append(msg))
    return seen


def test_payload_defaults_and_new_options(helper):
    calls = helper(ok_reply())
    failed, result = run_module(django_migrate_once.main, ARGS)
    assert not failed
    payload = calls[0][1]
    assert payload["retries"] == 3 and payload["retry_delay"] == 2.0
    assert payload["phase"] == "all" and payload["post_migrations"] == []
    assert payload["checks"] == [] and payload["check_timeout"] == 30.0
    assert payload["expected_plan_digest"] is None

    checks = [{"name": "n", "sql": "SELECT 1", "expect": 1}, {"name": "none", "sql": "SELECT 1 WHERE false",
                                                              "expect": None}]
    calls = helper(ok_reply())
    run_module(django_migrate_once.main, dict(ARGS, retries=0, retry_delay=0.5, phase="pre", checks=checks,
                                              post_migrations=["shop.0003_drop"], check_timeout=2.5,
                                              expected_plan_digest=f"  {DIGEST.upper()} "))
    payload = calls[-1][1]
    assert payload["retries"] == 0 and payload["retry_delay"] == 0.5 and payload["phase"] == "pre"
    assert payload["post_migrations"] == ["shop.0003_drop"] and payload["check_timeout"] == 2.5
    assert payload["checks"] == checks
    assert payload["expected_plan_digest"] == DIGEST


def test_result_keys(helper):
    helper(ok_reply())
    failed, result = run_module(django_migrate_once.main, ARGS)
    assert not failed and result["changed"] is True
    assert result["applied"] == [{"id": "shop.0002_x", "seconds": 0.1}]
    assert result["retries_used"] == 1 and len(result["attempts"]) == 2
    assert result["blockers"][0]["pid"] == 7 and result["plan_digest"] == DIGEST
    assert result["verification"]["ok"] is True and result["deferred"] == [] and result["post_pending"] == []
    assert result["audit"]["outcome"] == "applied" and result["audit"]["retries_used"] == 1
    assert "would_apply" not in result and "not_attempted" not in result


@pytest.mark.parametrize(
    "args,fragment",
    [
        ({"retries": -1}, "retries must be 0"),
        ({"retry_delay": -0.5}, "retry_delay must be 0 or more"),
        ({"check_timeout": 0}, "check_timeout must be a number of seconds above 0"),
        ({"lock_wait": -1}, "lock_wait must be 0 or more"),
        ({"post_migrations": ["shop"]}, "'shop' is not app_label.migration_name"),
        ({"checks": [{"name": "a", "sql": "SELECT 1", "expect": 1}, {"name": "a", "sql": "SELECT 2", "expect": 2}]},
         "repeated: a"),
        ({"checks": [{"name": "a", "sql": "SELECT 1"}]}, "expect"),
        ({"expected_plan_digest": "abc"}, "64 hexadecimal characters"),
        ({"audit_log": "relative/audit.log"}, "audit_log must be an absolute path"),
        ({"phase": "later"}, "phase"),
    ],
)
def test_bad_options_fail_before_the_helper_runs(helper, args, fragment):
    calls = helper(ok_reply())
    failed, result = run_module(django_migrate_once.main, dict(ARGS, **args))
    assert failed and fragment in result["msg"] and calls == []


def test_verification_failure_keeps_what_was_applied(helper):
    helper(ok_reply(ok=False, error_kind="verification_failed",
                    message="verification after migrating failed: check 'c' expected 1, got 2. Applied: shop.0002_x.",
                    verification={"ok": False, "pending_after": [], "invalid_indexes": [],
                                  "checks": [{"name": "c", "status": "fail", "got": 2, "expect": 1}]}))
    failed, result = run_module(django_migrate_once.main, ARGS)
    assert failed and result["error_kind"] == "verification_failed"
    assert "check 'c' expected 1, got 2" in result["msg"]
    assert result["applied"] == [{"id": "shop.0002_x", "seconds": 0.1}] and result["changed"] is True
    assert result["audit"]["outcome"] == "verification_failed"
    assert result["audit"]["verification"]["checks"] == [{"name": "c", "status": "fail"}]


def test_refusal_carries_both_digests_and_the_audit(helper):
    helper({"ok": False, "error_kind": "plan_changed", "message": "refusing to migrate: the pending plan's digest "
            "is x, the approved one is y. re-run the plan", "plan_digest": "x" * 64, "expected_plan_digest": "y" * 64,
            "target": TARGET, "lock": {"name": "safedeploy.migrate", "waited": 0.0}, "phase": "pre"})
    failed, result = run_module(django_migrate_once.main, dict(ARGS, expected_plan_digest="c" * 64))
    assert failed and result["error_kind"] == "plan_changed"
    assert result["plan_digest"] == "x" * 64 and result["expected_plan_digest"] == "y" * 64
    assert result["audit"]["outcome"] == "refused" and result["audit"]["error"].startswith("refusing to migrate")
    assert result["audit"]["target"] == TARGET


@pytest.mark.parametrize(
    "check_mode,reply,kind,outcome",
    [
        (True, {"applied": []}, None, "check_mode"),
        (False, {"applied": [{"id": "a.1"}]}, None, "applied"),
        (False, {"applied": []}, None, "nothing_to_do"),
        (False, {}, "migration_failed", "failed"),
        (False, {}, "lock_timeout", "failed"),
        (False, {}, "timeout", "failed"),
        (False, {}, "verification_failed", "verification_failed"),
        (False, {}, "target_mismatch", "refused"),
        (False, {}, "replica", "refused"),
        (False, {}, "plan_changed", "refused"),
        (False, {}, "bad_phase", "refused"),
        (True, {}, "plan_changed", "refused"),
    ],
)
def test_outcome(check_mode, reply, kind, outcome):
    assert _audit.outcome_of(check_mode, reply, kind) == outcome


def test_audit_log_written_private_and_scrubbed(helper, tmp_path, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", SECRET)
    helper(ok_reply(blockers=[{"pid": 7, "query": f"ALTER ROLE x PASSWORD '{SECRET}'"}]))
    log = tmp_path / "a" / "b" / "audit.log"
    context = {"controller_user": "alice", "release": "2.4.0", "oops": SECRET}
    failed, result = run_module(django_migrate_once.main, dict(ARGS, audit_log=str(log), audit_context=context))
    assert not failed
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    text = log.read_text()
    assert SECRET not in text and text.endswith("\n") and text.count("\n") == 1
    record = json.loads(text)
    assert record["context"] == {"controller_user": "alice", "release": "2.4.0", "oops": "********"}
    assert record["blockers"][0]["query"] == "ALTER ROLE x PASSWORD '********'"
    assert record["outcome"] == "applied" and record["error"] is None
    assert record["lock"] == {"name": "safedeploy.migrate", "waited": 0.5}
    assert record["applied"] == [{"id": "shop.0002_x", "seconds": 0.1}]
    assert record["plan_digest"] == DIGEST and record["phase"] == "all"
    assert record["verification"] == {"ok": True, "pending_after": [], "invalid_indexes": [],
                                      "checks": [{"name": "c", "status": "pass"}]}
    assert set(record) == {"time", "host", "remote_user", "context", "target", "lock", "phase", "plan_digest",
                           "pending_before", "applied", "attempts", "retries_used", "blockers", "verification",
                           "outcome", "error"}
    assert result["audit"] == record

    # a second run appends one more line
    run_module(django_migrate_once.main, dict(ARGS, audit_log=str(log)))
    assert len(log.read_text().splitlines()) == 2


def test_audit_log_on_helper_failure(helper, tmp_path):
    helper(_django_runner.HelperFailure("timeout", "the Django helper (migrate) did not finish within 5s",
                                        {"stderr": "..."}))
    log = tmp_path / "audit.log"
    failed, result = run_module(django_migrate_once.main, dict(ARGS, audit_log=str(log)))
    assert failed and result["error_kind"] == "timeout"
    record = json.loads(log.read_text())
    assert record["outcome"] == "failed" and "did not finish" in record["error"]
    assert result["audit"] == record and result["stderr"] == "..."


def test_audit_log_keeps_existing_permissions_and_warns(helper, tmp_path, warnings):
    helper(ok_reply())
    log = tmp_path / "audit.log"
    log.write_text("")
    os.chmod(log, 0o644)
    failed, _result = run_module(django_migrate_once.main, dict(ARGS, audit_log=str(log)))
    assert not failed and stat.S_IMODE(log.stat().st_mode) == 0o644
    assert any("readable or writable by others" in w and "chmod 600" in w for w in warnings)


def test_audit_log_symlink_is_refused_before_migrating(helper, tmp_path):
    calls = helper(ok_reply())
    target = tmp_path / "real.log"
    target.write_text("")
    link = tmp_path / "link.log"
    link.symlink_to(target)
    failed, result = run_module(django_migrate_once.main, dict(ARGS, audit_log=str(link)))
    assert failed and result["error_kind"] == "audit_log" and "symlink" in result["msg"]
    assert "Nothing was migrated" in result["msg"] and calls == [] and target.read_text() == ""


def test_audit_log_not_written_in_check_mode(helper, tmp_path):
    calls = helper(ok_reply(check_mode=True, applied=[], would_apply=["shop.0002_x"]))
    log = tmp_path / "x" / "audit.log"
    failed, result = run_module(django_migrate_once.main, dict(ARGS, audit_log=str(log), _ansible_check_mode=True))
    assert not failed and not log.exists() and not log.parent.exists()
    assert result["would_apply"] == ["shop.0002_x"] and result["audit"]["outcome"] == "check_mode"
    assert calls[0][1]["check_mode"] is True
