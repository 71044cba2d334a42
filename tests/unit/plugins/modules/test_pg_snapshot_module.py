"""Unit tests of the pg_snapshot module's argument handling and result shaping (logic is mocked)."""

from __future__ import annotations

from unittest import mock

from ansible.module_utils import basic
from ansible_collections.safedeploy.django.plugins.module_utils._pg import PgError
from ansible_collections.safedeploy.django.plugins.modules import pg_snapshot

from tests.unit.plugins.modules.utils import run_module

SECRET = "Sup3r-s3cret-pw"
ARGS = {"database": "shop", "dest": "/backups", "password": SECRET, "name": "s1"}


def test_params_reach_the_logic_with_defaults():
    seen = {}

    def fake_snapshot(params, check_mode):
        seen.update(params, check_mode=check_mode)
        return {"changed": True, "path": "/backups/s1.dump", "reused": False,
                "warnings": ["database 'shop' has no tables"]}

    warned = []
    with mock.patch.object(pg_snapshot, "snapshot", fake_snapshot), \
            mock.patch.object(basic.AnsibleModule, "warn", lambda self, w: warned.append(w)):
        failed, result = run_module(pg_snapshot.main, dict(ARGS, _ansible_check_mode=True))
    assert not failed and result["changed"] is True
    assert seen["check_mode"] is True
    assert seen["verify_data"] is True and seen["state"] == "present"
    assert seen["port"] is None and seen["host"] is None  # libpq environment decides
    assert (seen["format"], seen["jobs"], seen["compress"], seen["test_restore"]) == ("custom", 1, None, False)
    assert (seen["max_age"], seen["keep"], seen["allow_other_target"]) == (None, None, False)
    assert seen["provider"] == "pg_dump"
    assert seen["ssl_cert"] is None and seen["ssl_key"] is None
    assert warned == ["database 'shop' has no tables"] and "warnings" not in result


def test_db_alias():
    with mock.patch.object(pg_snapshot, "snapshot", lambda params, check_mode: {"db": params["database"]}):
        failed, result = run_module(pg_snapshot.main, {"db": "other", "dest": "/b"})
    assert not failed and result["db"] == "other"


def test_pg_error_becomes_fail_json():
    def boom(params, check_mode):
        raise PgError("PostgreSQL authentication failed for user 'x'", kind="auth_failed")

    with mock.patch.object(pg_snapshot, "snapshot", boom):
        failed, result = run_module(pg_snapshot.main, ARGS)
    assert failed and result["error_kind"] == "auth_failed"
    assert result["msg"].startswith("PostgreSQL authentication failed")


def test_unknown_and_missing_arguments():
    failed, result = run_module(pg_snapshot.main, dict(ARGS, compression=9))
    assert failed and "Unsupported parameters" in result["msg"] and "compression" in result["msg"]
    failed, result = run_module(pg_snapshot.main, {"database": "shop"})
    assert failed and "missing required arguments: dest" in result["msg"]
    failed, result = run_module(pg_snapshot.main, dict(ARGS, sslmode="sometimes"))
    assert failed and "sslmode" in result["msg"]


def test_password_is_no_log_and_choices_are_checked():
    failed, result = run_module(pg_snapshot.main, dict(ARGS, format="tar"))
    assert failed and "format" in result["msg"]
    failed, result = run_module(pg_snapshot.main, dict(ARGS, state="absent"))
    assert failed and "state" in result["msg"]
    failed, result = run_module(pg_snapshot.main, dict(ARGS, provider="command"))
    assert failed and "provider_command" in result["msg"] and "provider_check_command" in result["msg"]


def test_failure_keeps_the_warnings_and_details():
    def boom(params, check_mode):
        raise PgError("test_restore: 1 table(s) restored with other row counts", kind="test_restore_failed",
                      test_restore={"mismatches": [{"table": "public.t"}]}, warnings=["careful"])

    warned = []
    with mock.patch.object(pg_snapshot, "snapshot", boom), \
            mock.patch.object(basic.AnsibleModule, "warn", lambda self, w: warned.append(w)):
        failed, result = run_module(pg_snapshot.main, ARGS)
    assert failed and result["test_restore"]["mismatches"] == [{"table": "public.t"}]
    assert warned == ["careful"] and "warnings" not in result


def test_restored_state_reaches_the_logic():
    seen = {}

    def fake(params, check_mode):
        seen.update(params)
        return {"changed": True, "restored": True, "applied_migrations": [], "seconds": 1.0}

    with mock.patch.object(pg_snapshot, "snapshot", fake):
        failed, result = run_module(pg_snapshot.main, dict(ARGS, state="restored", confirm="shop"))
    assert not failed and result["restored"] is True
    assert seen["state"] == "restored" and seen["confirm"] == "shop"
