"""Unit tests of the pg_snapshot module's argument handling and result shaping (logic is mocked)."""

from __future__ import annotations

from unittest import mock

from ansible_collections.safedeploy.django.plugins.module_utils._pg import PgError
from ansible_collections.safedeploy.django.plugins.modules import pg_snapshot

from tests.unit.plugins.modules.utils import run_module

SECRET = "Sup3r-s3cret-pw"
ARGS = {"database": "shop", "dest": "/backups", "password": SECRET, "name": "s1"}


def test_params_reach_the_logic_with_defaults():
    seen = {}

    def fake_snapshot(params, check_mode):
        seen.update(params, check_mode=check_mode)
        return {"changed": True, "path": "/backups/s1.dump", "reused": False, "warning": "database 'shop' has no"}

    with mock.patch.object(pg_snapshot, "snapshot", fake_snapshot):
        failed, result = run_module(pg_snapshot.main, dict(ARGS, _ansible_check_mode=True))
    assert not failed and result["changed"] is True
    assert seen["check_mode"] is True
    assert seen["verify_data"] is True and seen["state"] == "present"
    assert seen["port"] is None and seen["host"] is None  # libpq environment decides
    assert "warning" not in result


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
    failed, result = run_module(pg_snapshot.main, dict(ARGS, compress=9))
    assert failed and "Unsupported parameters" in result["msg"] and "compress" in result["msg"]
    failed, result = run_module(pg_snapshot.main, {"database": "shop"})
    assert failed and "missing required arguments: dest" in result["msg"]
    failed, result = run_module(pg_snapshot.main, dict(ARGS, sslmode="sometimes"))
    assert failed and "sslmode" in result["msg"]
