"""Unit tests of module_utils/_snapshot.py with a scripted stand-in for the PostgreSQL clients.

The real clients run in tests/integration/test_pg_snapshot.py; here the runner is a
fake so that each branch (failure, empty output, corruption, check mode) is exercised
exactly and the argv the module builds can be inspected.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import stat
from unittest import mock

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils import _snapshot
from ansible_collections.safedeploy.django.plugins.module_utils._pg import ClientTools, PgError
from ansible_collections.safedeploy.django.plugins.module_utils._snapshot import (
    default_name,
    dump_argv,
    format_sha256_line,
    parse_restore_list,
    parse_sha256_line,
    snapshot,
    stderr_errors,
    validate_name,
)

SECRET = "Sup3r-s3cret-pw"

RESTORE_LIST = """\
;
; Archive created at 2025-01-01 12:00:00 UTC
;     dbname: shop
;     TOC Entries: 12
;     Compression: gzip
;     Dump Version: 1.14-0
;     Format: CUSTOM
;     Dumped from database version: 15.18 (Debian 15.18-0+deb12u1)
;     Dumped by pg_dump version: 15.18 (Debian 15.18-0+deb12u1)
;
; Selected TOC Entries:
;
215; 1259 16390 TABLE public shop_product app_owner
214; 1259 16389 SEQUENCE public shop_product_id_seq app_owner
216; 1259 16400 TABLE sales order lines app_owner
3350; 0 16390 TABLE DATA public shop_product app_owner
3351; 0 0 SEQUENCE SET public shop_product_id_seq app_owner
3200; 2606 16395 CONSTRAINT public shop_product shop_product_pkey app_owner
"""

PROBE = {
    "server_version": "15.18 (Debian 15.18-0+deb12u1)",
    "server_version_num": 150018,
    "current_user": "app_owner",
    "current_database": "shop",
    "in_recovery": False,
    "system_identifier": "7412345678901234567",
    "table_count": 2,
    "has_django_migrations": True,
}


def test_parse_restore_list_tables_and_header():
    listing = parse_restore_list(RESTORE_LIST)
    assert listing["tables"] == ["public.shop_product", "sales.order lines"]
    assert listing["server_version"] == "15.18 (Debian 15.18-0+deb12u1)"
    assert listing["pg_dump_version"].startswith("15.18")
    assert listing["dbname"] == "shop"


def test_dump_argv_has_no_password_and_never_prompts():
    argv = dump_argv("/usr/lib/postgresql/15/bin/pg_dump", "/backups/.s.dump.partial")
    assert argv == ["/usr/lib/postgresql/15/bin/pg_dump", "--format=custom", "--no-password",
                    "--file", "/backups/.s.dump.partial"]


def test_sha256_line_round_trip_matches_sha256sum_format():
    line = format_sha256_line("ab" * 32, "shop.dump")
    assert line == "ab" * 32 + "  shop.dump\n"
    assert parse_sha256_line(line) == ("ab" * 32, "shop.dump")
    assert parse_sha256_line("garbage") is None
    assert parse_sha256_line("") is None


@pytest.mark.parametrize("name", ["shop-2.4.0", "a", "Shop_before.v2"])
def test_valid_names(name):
    validate_name(name)


@pytest.mark.parametrize("name", ["../etc/passwd", ".hidden", "a/b", "", "x y", "foo.partial"])
def test_invalid_names(name):
    with pytest.raises(PgError, match="not a usable snapshot name"):
        validate_name(name)


def test_default_name_is_database_and_utc_time():
    now = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert default_name("shop", now) == "shop-20250102T030405Z"


def test_stderr_errors_ignores_warnings():
    assert stderr_errors("pg_dump: warning: there are circular foreign-key constraints") == []
    assert stderr_errors("pg_dump: error: query failed: ERROR:  permission denied") != []


class FakeClients:
    """Stands in for psql/pg_dump/pg_restore; records argv and env of every call."""

    def __init__(self, dump_rc=0, dump_stderr="", dump_bytes=b"PGDMP fake archive", restore_list=RESTORE_LIST,
                 list_rc=0, read_rc=0, probe=None):
        self.calls = []
        self.dump_rc, self.dump_stderr, self.dump_bytes = dump_rc, dump_stderr, dump_bytes
        self.restore_list, self.list_rc, self.read_rc = restore_list, list_rc, read_rc
        self.probe = dict(PROBE if probe is None else probe)

    def __call__(self, argv, env):
        self.calls.append((list(argv), dict(env)))
        tool = os.path.basename(argv[0])
        if tool == "psql":
            if "django_migrations" in argv[-1] and "json_agg" in argv[-1]:
                return 0, json.dumps(["shop.0001_initial"]), ""
            return 0, json.dumps(self.probe), ""
        if tool == "pg_dump":
            path = argv[argv.index("--file") + 1]
            with open(path, "wb") as handle:
                handle.write(self.dump_bytes)
            return self.dump_rc, "", self.dump_stderr
        if tool == "pg_restore" and "--list" in argv:
            return self.list_rc, self.restore_list, "" if self.list_rc == 0 else "pg_restore: error: bad"
        if tool == "pg_restore":
            return self.read_rc, "", "" if self.read_rc == 0 else "pg_restore: error: could not read input file"
        raise AssertionError(argv)


def tools(**_kwargs):
    return ClientTools("/pg/bin", "/pg/bin/pg_dump", "/pg/bin/pg_restore", (15, 18))


def run(tmp_path, clients, check_mode=False, **overrides):
    p = dict(host="127.0.0.1", port=5432, database="shop", user="app_owner", password=SECRET, passfile=None,
             sslmode=None, ca_cert=None, connect_timeout=None, dest=str(tmp_path / "snaps"), name="s1",
             bin_dir=None, verify_data=True, state="present")
    p.update(overrides)
    which = {"psql": "/pg/bin/psql", "pg_restore": "/pg/bin/pg_restore"}.get
    with mock.patch.object(_snapshot, "find_psql", lambda bin_dir, which: "/pg/bin/psql"):
        return snapshot(p, check_mode=check_mode, runner=clients, which=which, select_tools=tools)


def test_snapshot_writes_verified_private_files(tmp_path):
    clients = FakeClients()
    result = run(tmp_path, clients)
    dest = tmp_path / "snaps"
    assert result["changed"] is True and result["reused"] is False
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert sorted(os.listdir(dest)) == ["s1.dump", "s1.dump.sha256", "s1.json"]
    for name in os.listdir(dest):
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o600, name
    digest = hashlib.sha256(b"PGDMP fake archive").hexdigest()
    assert result["sha256"] == digest
    assert (dest / "s1.dump.sha256").read_text() == f"{digest}  s1.dump\n"
    manifest = json.loads((dest / "s1.json").read_text())
    assert manifest == result["manifest"]
    assert manifest["tables"] == 2 and manifest["sha256"] == digest and manifest["size"] == 18
    assert manifest["applied_migrations"] == ["shop.0001_initial"]
    assert result["tables"] == ["public.shop_product", "sales.order lines"]
    # pg_dump wrote to the hidden partial file, which was then renamed
    dump_call = next(argv for argv, _env in clients.calls if argv[0].endswith("pg_dump"))
    assert dump_call[-1] == str(dest / ".s1.dump.partial")


def test_password_only_in_environment_of_every_child(tmp_path):
    clients = FakeClients()
    run(tmp_path, clients)
    assert {os.path.basename(argv[0]) for argv, _env in clients.calls} == {"psql", "pg_dump", "pg_restore"}
    for argv, env in clients.calls:
        assert not any(SECRET in arg for arg in argv), argv
        assert env["PGPASSWORD"] == SECRET


def test_check_mode_writes_nothing(tmp_path):
    clients = FakeClients()
    result = run(tmp_path, clients, check_mode=True)
    assert result["changed"] is True
    assert not (tmp_path / "snaps").exists()
    assert [os.path.basename(argv[0]) for argv, _env in clients.calls] == ["psql", "psql"]


def test_second_run_is_reused_and_unchanged(tmp_path):
    first = run(tmp_path, FakeClients())
    clients = FakeClients()
    second = run(tmp_path, clients)
    assert second["changed"] is False and second["reused"] is True
    assert second["sha256"] == first["sha256"]
    assert not any(argv[0].endswith("pg_dump") for argv, _env in clients.calls)
    # still verified with pg_restore
    assert any(argv[0].endswith("pg_restore") for argv, _env in clients.calls)


def test_corrupted_existing_snapshot_fails(tmp_path):
    run(tmp_path, FakeClients())
    dump = tmp_path / "snaps" / "s1.dump"
    dump.write_bytes(b"PGDMP tampered")
    with pytest.raises(PgError, match="is corrupted") as info:
        run(tmp_path, FakeClients())
    assert info.value.kind == "corrupt"
    assert dump.read_bytes() == b"PGDMP tampered"


def test_existing_dump_without_checksum_fails(tmp_path):
    run(tmp_path, FakeClients())
    os.unlink(tmp_path / "snaps" / "s1.dump.sha256")
    with pytest.raises(PgError, match="cannot be verified"):
        run(tmp_path, FakeClients())


@pytest.mark.parametrize(
    ("clients", "match"),
    [
        (FakeClients(dump_rc=1, dump_stderr="pg_dump: error: query failed: ERROR:  permission denied"),
         r"pg_dump failed \(rc=1\)"),
        (FakeClients(dump_rc=-9), "pg_dump was killed by signal 9"),
        (FakeClients(dump_stderr="pg_dump: error: something odd"), "pg_dump reported errors"),
        (FakeClients(dump_bytes=b""), "wrote an empty file"),
        (FakeClients(list_rc=1), "pg_restore --list cannot read"),
        (FakeClients(read_rc=1), "truncated or corrupt archive"),
        (FakeClients(restore_list=";\n; no entries\n"), "lists no TABLE entries but the database has 2 tables"),
        (FakeClients(dump_rc=1, dump_stderr="pg_dump: error: aborting because of server version mismatch"),
         "Set bin_dir"),
    ],
)
def test_failed_dump_leaves_nothing(tmp_path, clients, match):
    with pytest.raises(PgError, match=match):
        run(tmp_path, clients)
    assert os.listdir(tmp_path / "snaps") == []


def test_empty_database_is_a_warning_not_a_failure(tmp_path):
    clients = FakeClients(restore_list=";\n", probe=dict(PROBE, table_count=0, has_django_migrations=False))
    result = run(tmp_path, clients)
    assert result["tables"] == [] and "has no tables" in result["warning"]


def test_stale_partial_from_killed_run_is_replaced(tmp_path):
    dest = tmp_path / "snaps"
    dest.mkdir()
    (dest / ".s1.dump.partial").write_bytes(b"half")
    result = run(tmp_path, FakeClients())
    assert result["changed"] is True
    assert sorted(os.listdir(dest)) == ["s1.dump", "s1.dump.sha256", "s1.json"]


def test_secret_scrubbed_from_failure_messages(tmp_path):
    clients = FakeClients(dump_rc=1, dump_stderr=f"pg_dump: error: weird {SECRET}")
    with pytest.raises(PgError) as info:
        run(tmp_path, clients)
    assert SECRET not in info.value.message and "********" in info.value.message


def test_dest_checks(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(PgError, match="exists and is not a directory"):
        _snapshot.check_dest_usable(str(afile))
    with pytest.raises(PgError, match="is not a directory"):
        _snapshot.check_dest_usable(str(afile / "sub"))
    with mock.patch.object(_snapshot.os, "access", return_value=False), \
            pytest.raises(PgError, match="is not writable by uid"):
        _snapshot.check_dest_usable(str(tmp_path))
    assert _snapshot.check_dest_usable(str(tmp_path / "new" / "deeper")) is True
    assert not (tmp_path / "new").exists()


def test_failure_while_finishing_leaves_no_companions(tmp_path):
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith(".dump"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    with mock.patch.object(_snapshot.os, "replace", failing_replace), \
            pytest.raises(PgError, match="No space left on device; nothing was kept"):
        run(tmp_path, FakeClients())
    assert os.listdir(tmp_path / "snaps") == []
