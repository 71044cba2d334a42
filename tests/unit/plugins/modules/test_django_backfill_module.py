"""django_backfill's module side, with the helper mocked: validation, payload, results, failures, the runner."""

from __future__ import annotations

import stat

import pytest
from ansible.module_utils import basic
from ansible_collections.safedeploy.django.plugins.module_utils import _backfill_helper, _django_runner
from ansible_collections.safedeploy.django.plugins.modules import django_backfill

from tests.unit.plugins.modules.utils import run_module

ARGS = {"project_path": "/srv/app", "python": "/srv/venv/bin/python", "name": "fill", "table": "shop_order",
        "set": "display_name = name", "where": "display_name IS NULL"}
SECRET = "unit-secret-pw-42"


def ok_reply(**extra):
    reply = {"ok": True, "changed": True, "status": "finished", "rows_done": 10, "rows_done_total": 10,
             "rows_left": 0, "rows_left_method": "count", "batches": 1, "batches_total": 1, "retries": 0,
             "elapsed": 0.5, "rows_per_second": 20.0, "eta_seconds": 0.0, "longest_batch_seconds": 0.1,
             "last_key": 10, "max_key": 10, "runs": 1, "started_at": "t0", "finished_at": "t1", "stopped_by": None,
             "target": {"database": "shop"}}
    reply.update(extra)
    return reply


@pytest.fixture()
def helper(monkeypatch):
    calls = []

    def install(reply):
        def fake(params, payload, *, which):
            calls.append(payload)
            if isinstance(reply, Exception):
                raise reply
            return reply
        monkeypatch.setattr(_backfill_helper, "run", fake)
        return calls
    return install


@pytest.fixture()
def warnings(monkeypatch):
    seen = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, msg: seen.append(msg))
    return seen


def test_payload_carries_the_definition_and_the_pace(helper):
    calls = helper(ok_reply())
    failed, result = run_module(django_backfill.main, dict(ARGS, batch_size=500, pause=0, max_runtime=30))
    assert not failed and result["changed"] is True and result["status"] == "finished"
    payload = calls[0]
    assert payload["definition"] == {"mode": "sql", "table": "shop_order", "key": "id", "set": "display_name = name",
                                     "where": "display_name IS NULL"}
    assert payload["batch_size"] == 500 and payload["pause"] == 0.0
    assert payload["deadline"] == 30.0 and payload["deadline_reason"] == "max_runtime"
    assert payload["statement_timeout"] == "5s" and payload["lock_timeout"] == "1s" and payload["lock_retries"] == 5
    assert payload["check_mode"] is False and payload["restart"] is False
    assert payload["count_timeout"] == "3000ms"  # a tenth of max_runtime, below the default 30s
    for key in ("rows_done", "rows_done_total", "rows_left", "batches", "rows_per_second", "elapsed", "eta_seconds",
                "last_key", "max_key", "retries", "longest_batch_seconds", "state_table", "target", "runs"):
        assert key in result, key
    assert "would_update" not in result


def test_without_max_runtime_the_run_stops_before_timeout_kills_it(helper, warnings):
    calls = helper(ok_reply(status="paused", stopped_by="timeout", rows_left=5, changed=True))
    failed, result = run_module(django_backfill.main, dict(ARGS, timeout=600))
    assert calls[0]["deadline"] == 540.0 and calls[0]["deadline_reason"] == "timeout"
    assert calls[0]["count_timeout"] == "30000ms"
    assert not failed and result["status"] == "paused" and result["stopped_by"] == "timeout"
    assert any("run it again to resume" in w for w in warnings)


def test_finished_backfill_is_unchanged(helper):
    helper(ok_reply(changed=False, rows_done=0))
    failed, result = run_module(django_backfill.main, ARGS)
    assert not failed and result["changed"] is False


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"batch_size": 0}, "batch_size must be 1 or more"),
        ({"pause": -1}, "pause must be 0 or more"),
        ({"where": None}, "where is required with set"),
        ({"command": "fill"}, "not both"),
        ({"set": "x = 1; DROP TABLE y"}, "without ';'"),
        ({"table": "bad name"}, "table must be a table name"),
        ({"progress_log": "relative.log"}, "progress_log must be an absolute path"),
        ({"max_runtime": 100, "timeout": 60}, "must be below timeout"),
    ],
)
def test_argument_errors_fail_before_running_anything(helper, changes, expected):
    calls = helper(ok_reply())
    args = {k: v for k, v in dict(ARGS, **changes).items() if v is not None}
    failed, result = run_module(django_backfill.main, args)
    assert failed and expected in result["msg"] and result["error_kind"] == "arguments"
    assert calls == []


def test_key_is_no_secret(helper, warnings):
    helper(ok_reply())
    run_module(django_backfill.main, dict(ARGS, key="order_id"))
    assert not any("no_log" in w for w in warnings)


def test_check_mode_returns_would_update_and_writes_no_progress_log(helper, tmp_path):
    calls = helper(ok_reply(check_mode=True, would_update=42, would_restart=False, status="new", changed=True))
    log = tmp_path / "p.log"
    failed, result = run_module(django_backfill.main, dict(ARGS, _ansible_check_mode=True, progress_log=str(log)))
    assert not failed and result["would_update"] == 42 and result["would_restart"] is False
    assert calls[0]["check_mode"] is True and calls[0]["progress_log"] is None
    assert not log.exists()


def test_progress_log_is_created_private_before_the_run(helper, tmp_path):
    calls = helper(ok_reply())
    log = tmp_path / "logs" / "fill.log"
    failed, _result = run_module(django_backfill.main, dict(ARGS, progress_log=str(log)))
    assert not failed and calls[0]["progress_log"] == str(log)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and stat.S_IMODE(log.parent.stat().st_mode) == 0o700


def test_progress_log_through_a_symlink_is_refused(helper, tmp_path):
    calls = helper(ok_reply())
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "p.log"
    link.symlink_to(target)
    failed, result = run_module(django_backfill.main, dict(ARGS, progress_log=str(link)))
    assert failed and result["error_kind"] == "progress_log" and calls == []


def test_a_failed_batch_reports_the_progress_kept(helper):
    helper(ok_reply(ok=False, error_kind="lock_timeout", message="the batch after key 100 waited", status="failed",
                    rows_done=100, last_key=100, changed=True))
    failed, result = run_module(django_backfill.main, ARGS)
    assert failed and result["error_kind"] == "lock_timeout" and result["msg"].startswith("the batch after key 100")
    assert result["rows_done"] == 100 and result["last_key"] == 100 and result["status"] == "failed"
    assert result["changed"] is True


def test_a_refusal_is_a_plain_failure(helper):
    helper({"ok": False, "error_kind": "definition_changed", "message": "backfill 'fill' was started with another"})
    failed, result = run_module(django_backfill.main, ARGS)
    assert failed and result["error_kind"] == "definition_changed" and "started with another" in result["msg"]
    assert "rows_done" not in result


def test_a_helper_failure_keeps_its_kind_and_stderr_and_the_secret_is_registered(helper, monkeypatch):
    registered = []
    real = _django_runner.register_secrets
    monkeypatch.setattr(_django_runner, "register_secrets", lambda m: registered.extend(real(m)) or registered)
    helper(_django_runner.HelperFailure("db_auth", "login failed", {"stderr": "FATAL: password", "lock": {}}))
    failed, result = run_module(django_backfill.main, dict(ARGS, app_environment={"PGPASSWORD": SECRET}))
    assert failed and result["error_kind"] == "db_auth" and result["stderr"] == "FATAL: password"
    assert "lock" not in result and SECRET in registered
