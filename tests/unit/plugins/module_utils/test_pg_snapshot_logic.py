"""Unit tests of module_utils/_snapshot.py with a scripted stand-in for the PostgreSQL clients.

The real clients run in tests/integration/test_pg_snapshot.py and test_snapshot_faults.py;
here the runner is a fake so that each branch (failure, empty output, corruption, check
mode, reuse, retention, restore, provider) is exercised exactly and the argv the module
builds can be inspected.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import stat
from unittest import mock

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils import _snapshot
from ansible_collections.safedeploy.django.plugins.module_utils._pg import ClientTools, PgError
from ansible_collections.safedeploy.django.plugins.module_utils._snapshot import (
    count_sql,
    dbname_arg,
    default_name,
    dump_argv,
    format_sha256_line,
    parse_max_age,
    parse_provider_output,
    parse_restore_list,
    parse_sha256_line,
    render_command,
    restore_argv,
    same_target,
    scratch_name,
    snapshot,
    stderr_errors,
    validate_name,
)

SECRET = "Sup3r-s3cret-pw"
T0 = datetime.datetime(2025, 1, 2, 12, 0, 0, tzinfo=datetime.UTC)

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
    "can_create_db": True,
    "encoding": "UTF8",
    "datcollate": "C.UTF-8",
    "datctype": "C.UTF-8",
}
TABLES = [
    {"schema": "public", "name": "shop_product", "estimate": 5},
    {"schema": "sales", "name": "order lines", "estimate": 0},
]
MIGRATIONS = ["shop.0001_initial"]


class FakeClients:
    """Stands in for psql/pg_dump/pg_restore (and provider commands); records argv and env of every call."""

    def __init__(self, dump_rc=0, dump_stderr="", dump_bytes=b"PGDMP fake archive", restore_list=RESTORE_LIST,
                 list_rc=0, read_rc=0, probe=None, tables=None, counts=None, scratch_counts=None,
                 scratch_restore_rc=0, restore_rc=0, migrations_after=None, provider=None):
        self.calls = []
        self.dump_rc, self.dump_stderr, self.dump_bytes = dump_rc, dump_stderr, dump_bytes
        self.restore_list, self.list_rc, self.read_rc = restore_list, list_rc, read_rc
        self.probe = dict(PROBE if probe is None else probe)
        self.tables = TABLES if tables is None else tables
        self.counts = counts or [5, 0]
        self.scratch_counts = scratch_counts or self.counts
        self.scratch_restore_rc, self.restore_rc = scratch_restore_rc, restore_rc
        self.migrations_after = MIGRATIONS if migrations_after is None else migrations_after
        self.provider = provider or []
        self.restored = False

    def tools(self, name):
        return [os.path.basename(argv[0]) for argv, _env in self.calls].count(name)

    def sql(self, fragment):
        return [argv[-1] for argv, _env in self.calls if os.path.basename(argv[0]) == "psql" and fragment in argv[-1]]

    def __call__(self, argv, env):
        self.calls.append((list(argv), dict(env)))
        tool = os.path.basename(argv[0])
        if tool == "psql":
            return self.psql(argv[-1], env)
        if tool == "pg_dump":
            path = argv[argv.index("--file") + 1]
            if "--format=directory" in argv:
                for fname, data in (("toc.dat", b"PGDMP toc"), ("3350.dat.gz", self.dump_bytes)):
                    with open(os.path.join(path, fname), "wb") as handle:
                        handle.write(data)
            else:
                with open(path, "wb") as handle:
                    handle.write(self.dump_bytes)
            return self.dump_rc, "", self.dump_stderr
        if tool == "pg_restore" and "--list" in argv:
            return self.list_rc, self.restore_list, "" if self.list_rc == 0 else "pg_restore: error: bad"
        if tool == "pg_restore" and "--single-transaction" in argv:
            self.restored = self.restore_rc == 0
            return self.restore_rc, "", "" if self.restore_rc == 0 else "pg_restore: error: cannot drop table"
        if tool == "pg_restore" and "--no-privileges" in argv:
            return self.scratch_restore_rc, "", "" if not self.scratch_restore_rc else "pg_restore: error: oops"
        if tool == "pg_restore":
            return self.read_rc, "", "" if self.read_rc == 0 else "pg_restore: error: could not read input file"
        if tool == "provider":
            return self.provider.pop(0)
        raise AssertionError(argv)

    def psql(self, sql, env):
        if "server_version_num" in sql:
            return 0, json.dumps(self.probe), ""
        if "json_agg(app" in sql:
            return 0, json.dumps(self.migrations_after if self.restored else MIGRATIONS), ""
        if "to_regclass('django_migrations')" in sql:
            return 0, "true", ""
        if "'estimate'" in sql:
            return 0, json.dumps(self.tables), ""
        if "array_to_json(ARRAY[" in sql:
            scratch = "_sdverify_" in env.get("PGDATABASE", "")
            return 0, json.dumps(self.scratch_counts if scratch else self.counts), ""
        if sql.startswith(("CREATE DATABASE", "DROP DATABASE")):
            return 0, "", ""
        raise AssertionError(sql)


class FakeSession:
    def __init__(self, clients, fail_export=False):
        self.clients, self.fail_export = clients, fail_export
        self.statements, self.closed = [], False

    def __call__(self, psql, env, target):
        return self

    def query(self, sql):
        self.statements.append(sql)
        if "pg_export_snapshot" in sql:
            if self.fail_export:
                raise PgError("ERROR:  cannot export a snapshot during recovery", kind="query_failed")
            return "00000003-0000001B-1\n"
        return ""

    def query_json(self, sql):
        self.statements.append(sql)
        return json.loads(self.clients.psql(sql, {})[1])

    def close(self):
        self.closed = True
        return 0


def tools(**_kwargs):
    return ClientTools("/pg/bin", "/pg/bin/pg_dump", "/pg/bin/pg_restore", (15, 18))


def run(tmp_path, clients, check_mode=False, now=T0, session=None, **overrides):
    p = dict(host="127.0.0.1", port=5432, database="shop", user="app_owner", password=SECRET, passfile=None,
             sslmode=None, ca_cert=None, ssl_cert=None, ssl_key=None, connect_timeout=None,
             dest=str(tmp_path / "snaps"), name="s1", bin_dir=None, verify_data=True, state="present",
             format="custom", jobs=1, compress=None, test_restore=False, max_age=None, keep=None, confirm=None,
             allow_other_target=False, provider="pg_dump", provider_command=None, provider_check_command=None,
             provider_timeout=3600, provider_poll_interval=10)
    p.update(overrides)
    which = {"psql": "/pg/bin/psql", "pg_restore": "/pg/bin/pg_restore"}.get
    with mock.patch.object(_snapshot, "find_psql", lambda bin_dir, which: "/pg/bin/psql"):
        return snapshot(p, check_mode=check_mode, runner=clients, which=which, select_tools=tools,
                        now=lambda: now, session_factory=session, sleep=lambda s: None)


# -- pure helpers ------------------------------------------------------------------------------

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
    argv = dump_argv("/pg_dump", "/b/.s.dir.partial", "directory", jobs=2, compress=0, snapshot_id="0000-1")
    assert argv == ["/pg_dump", "--format=directory", "--no-password", "--file", "/b/.s.dir.partial", "--jobs=2",
                    "--compress=0", "--snapshot=0000-1"]


def test_restore_argv_is_all_or_nothing():
    assert restore_argv("/pg_restore", "/b/s.dump", "shop") == [
        "/pg_restore", "--clean", "--if-exists", "--single-transaction", "--no-owner", "--exit-on-error",
        "--no-password", "--dbname", "shop", "/b/s.dump"]
    assert dbname_arg("odd=name") == "dbname='odd=name'"
    assert dbname_arg("it's=x") == "dbname='it\\'s=x'"


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


@pytest.mark.parametrize(("value", "seconds"), [
    ("6h", 21600), ("30m", 1800), ("2d", 172800), ("1h30m", 5400), ("90s", 90), ("1w", 604800), ("120", 120),
    (3600, 3600), ("0", 0), (None, None), (" 2H ", 7200),
])
def test_parse_max_age(value, seconds):
    assert parse_max_age(value) == seconds


@pytest.mark.parametrize("value", ["6 hours", "h", "-5", "1.5h", True, -3])
def test_parse_max_age_rejects(value):
    with pytest.raises(PgError, match="max_age"):
        parse_max_age(value)


def test_render_command_replaces_only_known_placeholders():
    argv = render_command(["snap", "{name}", "--db={database}@{host}:{port}", '{"x": 1}', "{id}", "{other}"],
                          {"name": "s1", "database": "shop", "host": "db", "port": 5432, "id": "rds:1"})
    assert argv == ["snap", "s1", "--db=shop@db:5432", '{"x": 1}', "rds:1", "{other}"]


def test_parse_provider_output_takes_the_last_line():
    assert parse_provider_output('creating...\n{"id": "a"}\n\n', "x") == {"id": "a"}
    with pytest.raises(PgError, match="not JSON"):
        parse_provider_output('{"id": "a"}\ndone\n', "provider_command")
    with pytest.raises(PgError, match="not a JSON object"):
        parse_provider_output('["a"]', "provider_command")
    with pytest.raises(PgError, match="printed nothing"):
        parse_provider_output("", "provider_command")


def test_same_target():
    a = {"database": "shop", "system_identifier": "1", "host": "h", "port": 5432}
    assert same_target(a, dict(a, host="replica"))[0] is True  # a replica shares the system identifier
    assert same_target(a, dict(a, system_identifier="2"))[0] is False
    assert same_target(a, dict(a, database="shop2"))[0] is False
    assert same_target(dict(a, system_identifier=None), dict(a, system_identifier="9"))[0] is True
    ok, why = same_target(dict(a, system_identifier=None), dict(a, port=5433))
    assert ok is False and "system identifier unknown" in why


def test_scratch_name_is_a_short_plain_identifier():
    assert scratch_name("shop", "abcd1234") == "shop_sdverify_abcd1234"
    long = scratch_name("Shop-DB." + "x" * 80, "abcd1234")
    assert len(long) <= 63 and long.startswith("shop_db_xx") and long.endswith("_sdverify_abcd1234")


def test_count_sql_quotes_identifiers():
    sql = count_sql([{"schema": "sales", "name": 'order "lines"'}])
    assert sql == 'SELECT array_to_json(ARRAY[(SELECT count(*) FROM "sales"."order ""lines""")]::bigint[])'


# -- taking a snapshot ---------------------------------------------------------------------------

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
    assert manifest["collection"] == "safedeploy.django" and manifest["kind"] == "pg_snapshot"
    assert manifest["format"] == "custom" and manifest["provider"] == "pg_dump"
    assert manifest["tables"] == 2 and manifest["sha256"] == digest and manifest["size"] == 18
    assert manifest["applied_migrations"] == ["shop.0001_initial"] == result["applied_migrations"]
    assert manifest["created"] == "2025-01-02T12:00:00Z"
    assert manifest["fingerprint"] == {
        "host": "127.0.0.1", "port": 5432, "database": "shop", "user": "app_owner",
        "server_version": PROBE["server_version"], "server_version_num": 150018,
        "system_identifier": "7412345678901234567", "in_recovery": False}
    assert manifest["pg_dump_version"].startswith("15.18")
    assert "row_counts" not in manifest  # exact counts only with test_restore
    assert result["tables"] == ["public.shop_product", "sales.order lines"]
    # pg_dump wrote to the hidden partial file, which was then renamed
    dump_call = next(argv for argv, _env in clients.calls if argv[0].endswith("pg_dump"))
    assert dump_call[4] == str(dest / ".s1.dump.partial")
    assert result["command"] == dump_call
    assert set(result["timings"]) == {"facts", "dump", "checksum", "pg_restore_checks", "verify", "publish"}


def test_password_only_in_environment_of_every_child(tmp_path):
    clients = FakeClients()
    run(tmp_path, clients)
    assert {os.path.basename(argv[0]) for argv, _env in clients.calls} == {"psql", "pg_dump", "pg_restore"}
    for argv, env in clients.calls:
        assert not any(SECRET in arg for arg in argv), argv
        assert env["PGPASSWORD"] == SECRET


def test_ssl_client_certificate_reaches_every_child(tmp_path):
    clients = FakeClients()
    run(tmp_path, clients, ssl_cert="/etc/c.crt", ssl_key="/etc/c.key", sslmode="verify-full")
    for _argv, env in clients.calls:
        assert (env["PGSSLCERT"], env["PGSSLKEY"], env["PGSSLMODE"]) == ("/etc/c.crt", "/etc/c.key", "verify-full")


def test_check_mode_writes_nothing(tmp_path):
    clients = FakeClients()
    result = run(tmp_path, clients, check_mode=True)
    assert result["changed"] is True
    assert not (tmp_path / "snaps").exists()
    assert [os.path.basename(argv[0]) for argv, _env in clients.calls] == ["psql", "psql"]


def test_second_run_is_reused_and_unchanged(tmp_path):
    first = run(tmp_path, FakeClients())
    clients = FakeClients()
    second = run(tmp_path, clients, now=T0 + datetime.timedelta(minutes=5))
    assert second["changed"] is False and second["reused"] is True
    assert second["sha256"] == first["sha256"] and second["age_seconds"] == 300
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


def test_checksum_file_and_manifest_must_agree(tmp_path):
    run(tmp_path, FakeClients())
    dump = tmp_path / "snaps" / "s1.dump"
    dump.write_bytes(b"PGDMP tampered")
    digest = hashlib.sha256(b"PGDMP tampered").hexdigest()
    (tmp_path / "snaps" / "s1.dump.sha256").write_text(format_sha256_line(digest, "s1.dump"))
    with pytest.raises(PgError, match="does not match its manifest") as info:
        run(tmp_path, FakeClients())
    assert info.value.kind == "corrupt"


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
        (FakeClients(dump_rc=137), r"probably killed by signal 9"),
        (FakeClients(dump_stderr="pg_dump: error: something odd"), "pg_dump reported errors"),
        (FakeClients(dump_bytes=b""), "wrote nothing"),
        (FakeClients(list_rc=1), "pg_restore --list cannot read"),
        (FakeClients(read_rc=1), "truncated or corrupt archive"),
        (FakeClients(restore_list=";\n; no entries\n"), "does not list 2 of the 2 tables"),
        (FakeClients(restore_list=RESTORE_LIST.replace("216; 1259 16400 TABLE sales order lines app_owner\n", "")),
         r"does not list 1 of the 2 tables .*\(sales.order lines\)"),
        (FakeClients(dump_rc=1, dump_stderr="pg_dump: error: aborting because of server version mismatch"),
         "Set bin_dir"),
        (FakeClients(dump_rc=1, dump_stderr="pg_dump: error: could not write to output file: No space left on "
                                            "device"), "is full"),
    ],
)
def test_failed_dump_leaves_nothing(tmp_path, clients, match):
    with pytest.raises(PgError, match=match):
        run(tmp_path, clients)
    assert os.listdir(tmp_path / "snaps") == []


def test_empty_database_is_a_warning_not_a_failure(tmp_path):
    clients = FakeClients(restore_list=";\n", tables=[], probe=dict(PROBE, table_count=0))
    result = run(tmp_path, clients)
    assert result["tables"] == [] and any("has no tables" in w for w in result["warnings"])


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
            pytest.raises(PgError, match="No space left on device; nothing was kept") as info:
        run(tmp_path, FakeClients())
    assert info.value.kind == "dest_full"
    assert os.listdir(tmp_path / "snaps") == []


def test_manifest_write_failure_removes_the_published_archive(tmp_path):
    real_write = _snapshot._write_private

    def failing_write(path, data):
        if path.endswith(".json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    with mock.patch.object(_snapshot, "_write_private", failing_write), pytest.raises(PgError, match="nothing was"):
        run(tmp_path, FakeClients())
    assert os.listdir(tmp_path / "snaps") == []


# -- options ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "match"), [
    ({"jobs": 2}, "jobs: 2 needs format: directory"),
    ({"jobs": 0, "format": "directory"}, "jobs must be 1 or more"),
    ({"compress": 10}, "compress must be between 0"),
    ({"keep": 0}, "keep must be 1 or more"),
    ({"max_age": "soon"}, "is not a duration"),
    ({"provider": "command"}, "provider: command needs provider_command and provider_check_command"),
    ({"provider": "command", "provider_command": ["x"], "provider_check_command": ["y"], "test_restore": True},
     "test_restore needs a pg_dump archive"),
])
def test_bad_options_fail_before_anything(tmp_path, overrides, match):
    clients = FakeClients()
    with pytest.raises(PgError, match=match) as info:
        run(tmp_path, clients, **overrides)
    assert info.value.kind == "bad_option" and clients.calls == []


def test_compress_is_passed(tmp_path):
    clients = FakeClients()
    result = run(tmp_path, clients, compress=0)
    assert "--compress=0" in result["command"] and result["manifest"]["compress"] == 0


# -- directory format ----------------------------------------------------------------------------

def test_directory_format_with_jobs(tmp_path):
    clients = FakeClients()
    result = run(tmp_path, clients, format="directory", jobs=2)
    dest = tmp_path / "snaps"
    assert sorted(os.listdir(dest)) == ["s1.dir", "s1.dir.sha256", "s1.json"]
    archive = dest / "s1.dir"
    assert result["path"] == str(archive) and result["format"] == "directory"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in archive.iterdir())
    assert "--format=directory" in result["command"] and "--jobs=2" in result["command"]
    listing = (dest / "s1.dir.sha256").read_text()
    assert listing == (format_sha256_line(hashlib.sha256(b"PGDMP fake archive").hexdigest(), "s1.dir/3350.dat.gz")
                       + format_sha256_line(hashlib.sha256(b"PGDMP toc").hexdigest(), "s1.dir/toc.dat"))
    assert result["sha256"] == hashlib.sha256(listing.encode()).hexdigest() == result["manifest"]["sha256"]
    assert result["size"] == len(b"PGDMP fake archive") + len(b"PGDMP toc")
    assert result["manifest"]["jobs"] == 2

    again = run(tmp_path, FakeClients(), format="directory")
    assert again["reused"] is True and again["sha256"] == result["sha256"]

    (archive / "3350.dat.gz").write_bytes(b"flipped")
    with pytest.raises(PgError, match=r"these files differ from .*: s1.dir/3350.dat.gz"):
        run(tmp_path, FakeClients(), format="directory")


def test_directory_format_failure_leaves_nothing(tmp_path):
    with pytest.raises(PgError):
        run(tmp_path, FakeClients(read_rc=1), format="directory", jobs=2)
    assert os.listdir(tmp_path / "snaps") == []


# -- the dump's snapshot ------------------------------------------------------------------------------

def test_facts_are_read_in_the_snapshot_pg_dump_imports(tmp_path):
    clients = FakeClients()
    session = FakeSession(clients)
    result = run(tmp_path, clients, session=session, test_restore=True)
    assert result["command"][-1] == "--snapshot=00000003-0000001B-1"
    assert session.closed
    assert session.statements[:4] == ["SET idle_in_transaction_session_timeout = 0", "SET statement_timeout = 0",
                                      "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                                      "SELECT pg_export_snapshot()"]
    assert any("array_to_json(ARRAY[" in s for s in session.statements)  # counted in the session
    assert result["manifest"]["consistent_snapshot"] is True
    assert result["manifest"]["row_counts"] == {"public.shop_product": 5, "sales.order lines": 0}


def test_no_exported_snapshot_falls_back_with_a_warning(tmp_path):
    clients = FakeClients()
    result = run(tmp_path, clients, session=FakeSession(clients, fail_export=True))
    assert not any(a.startswith("--snapshot") for a in result["command"])
    assert result["manifest"]["consistent_snapshot"] is False
    assert any("could not export a snapshot" in w for w in result["warnings"])


# -- test_restore ---------------------------------------------------------------------------------------

def test_test_restore_counts_match_and_scratch_is_dropped(tmp_path):
    clients = FakeClients()
    result = run(tmp_path, clients, test_restore=True)
    test = result["test_restore"]
    assert test["database"].startswith("shop_sdverify_") and test["tables_checked"] == 2
    assert test["mismatches"] == [] and test["dropped"] is True and test["seconds"] >= 0
    create = clients.sql("CREATE DATABASE")
    assert create == [f'CREATE DATABASE "{test["database"]}" TEMPLATE template0 ENCODING \'UTF8\' '
                      "LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'"]
    assert clients.sql("DROP DATABASE") == [f'DROP DATABASE IF EXISTS "{test["database"]}" WITH (FORCE)']
    scratch_restore = next(argv for argv, _env in clients.calls if "--no-privileges" in argv)
    assert scratch_restore[-1].endswith(".s1.dump.partial")  # tested before it was published
    assert result["manifest"]["test_restore"]["mismatches"] == []


def test_test_restore_mismatch_fails_keeps_nothing_and_drops_scratch(tmp_path):
    clients = FakeClients(scratch_counts=[4, 0])
    with pytest.raises(PgError, match=r"public.shop_product: 5 rows dumped, 4 restored") as info:
        run(tmp_path, clients, test_restore=True)
    assert info.value.kind == "test_restore_failed"
    assert info.value.details["test_restore"]["mismatches"] == [
        {"table": "public.shop_product", "expected": 5, "restored": 4}]
    assert len(clients.sql("DROP DATABASE")) == 1
    assert os.listdir(tmp_path / "snaps") == []


def test_test_restore_failure_drops_scratch(tmp_path):
    clients = FakeClients(scratch_restore_rc=1)
    with pytest.raises(PgError, match="into the scratch database .* failed"):
        run(tmp_path, clients, test_restore=True)
    assert len(clients.sql("DROP DATABASE")) == 1
    assert os.listdir(tmp_path / "snaps") == []


def test_test_restore_needs_createdb_before_dumping(tmp_path):
    clients = FakeClients(probe=dict(PROBE, can_create_db=False))
    with pytest.raises(PgError, match=r"lacks the CREATEDB right: grant it \(ALTER ROLE app_owner CREATEDB\)"):
        run(tmp_path, clients, test_restore=True)
    assert clients.tools("pg_dump") == 0


# -- max_age ----------------------------------------------------------------------------------------------

def test_max_age_reuses_the_newest_young_snapshot(tmp_path):
    run(tmp_path, FakeClients(), name=None)  # shop-20250102T120000Z
    run(tmp_path, FakeClients(), name=None, now=T0 + datetime.timedelta(hours=1))
    clients = FakeClients()
    result = run(tmp_path, clients, name=None, max_age="2h", now=T0 + datetime.timedelta(hours=1, minutes=30))
    assert result["reused"] is True and result["changed"] is False
    assert result["name"] == "shop-20250102T130000Z" and result["age_seconds"] == 1800
    assert result["path"] == str(tmp_path / "snaps" / "shop-20250102T130000Z.dump")
    assert clients.tools("pg_dump") == 0

    clients = FakeClients()
    result = run(tmp_path, clients, name=None, max_age="20m", now=T0 + datetime.timedelta(hours=1, minutes=30))
    assert result["reused"] is False and result["changed"] is True and clients.tools("pg_dump") == 1


def test_max_age_skips_a_corrupted_candidate(tmp_path):
    run(tmp_path, FakeClients(), name="old")
    (tmp_path / "snaps" / "old.dump").write_bytes(b"PGDMP flipped")
    clients = FakeClients()
    result = run(tmp_path, clients, name="new", max_age="1d", now=T0 + datetime.timedelta(minutes=1))
    assert result["changed"] is True and result["name"] == "new"
    assert any("snapshot old" in w and "was not reused" in w and "corrupted" in w for w in result["warnings"])
    assert (tmp_path / "snaps" / "old.dump").read_bytes() == b"PGDMP flipped"  # left for inspection


def test_max_age_ignores_other_targets_and_foreign_files(tmp_path):
    run(tmp_path, FakeClients(probe=dict(PROBE, system_identifier="999")), name="other-cluster")
    dest = tmp_path / "snaps"
    (dest / "notes.json").write_text('{"created": "2025-01-02T12:00:00Z"}')
    clients = FakeClients()
    result = run(tmp_path, clients, name="mine", max_age="1d")
    assert result["changed"] is True and clients.tools("pg_dump") == 1


def test_existing_name_wins_over_max_age(tmp_path):
    run(tmp_path, FakeClients(), name="a")
    run(tmp_path, FakeClients(), name="b", now=T0 + datetime.timedelta(minutes=1))
    result = run(tmp_path, FakeClients(), name="a", max_age="1h", now=T0 + datetime.timedelta(minutes=2))
    assert result["reused"] is True and result["name"] == "a"


# -- keep -------------------------------------------------------------------------------------------------

def test_keep_prunes_older_snapshots_of_the_same_target_only(tmp_path):
    for i in range(4):
        run(tmp_path, FakeClients(), name=f"s{i}", now=T0 + datetime.timedelta(hours=i))
    run(tmp_path, FakeClients(probe=dict(PROBE, system_identifier="999")), name="other",
        now=T0 - datetime.timedelta(days=3))
    dest = tmp_path / "snaps"
    (dest / "unrelated.dump").write_bytes(b"keep me")
    result = run(tmp_path, FakeClients(), name="s4", keep=2, check_mode=True, now=T0 + datetime.timedelta(hours=4))
    assert result["pruned"] == ["s2", "s1", "s0"]
    assert (dest / "s0.dump").exists()  # check mode removes nothing
    result = run(tmp_path, FakeClients(), name="s4", keep=2, now=T0 + datetime.timedelta(hours=4))
    assert result["pruned"] == ["s2", "s1", "s0"]
    assert sorted(os.listdir(dest)) == sorted(
        ["s3.dump", "s3.dump.sha256", "s3.json", "s4.dump", "s4.dump.sha256", "s4.json",
         "other.dump", "other.dump.sha256", "other.json", "unrelated.dump"])


def test_keep_never_removes_the_reused_snapshot(tmp_path):
    run(tmp_path, FakeClients(), name="old")
    run(tmp_path, FakeClients(), name="newer", now=T0 + datetime.timedelta(hours=1))
    result = run(tmp_path, FakeClients(), name="old", keep=1, now=T0 + datetime.timedelta(hours=2))
    assert result["reused"] is True and result["pruned"] == ["newer"] and result["changed"] is True
    assert (tmp_path / "snaps" / "old.dump").exists()


# -- state: restored ----------------------------------------------------------------------------------------

def restore(tmp_path, clients, **overrides):
    args = dict(state="restored", confirm="shop", now=T0 + datetime.timedelta(hours=1))
    args.update(overrides)
    return run(tmp_path, clients, **args)


def test_restore_round_trip(tmp_path):
    run(tmp_path, FakeClients())
    clients = FakeClients()
    result = restore(tmp_path, clients)
    assert result["restored"] is True and result["changed"] is True
    assert result["applied_migrations"] == MIGRATIONS and result["seconds"] >= 0
    argv = next(argv for argv, _env in clients.calls if "--single-transaction" in argv)
    assert argv == ["/pg/bin/pg_restore", "--clean", "--if-exists", "--single-transaction", "--no-owner",
                    "--exit-on-error", "--no-password", "--dbname", "shop", str(tmp_path / "snaps" / "s1.dump")]
    assert result["extra_tables"] == []


@pytest.mark.parametrize("confirm", [None, "shop2", ""])
def test_restore_needs_confirm(tmp_path, confirm):
    run(tmp_path, FakeClients())
    clients = FakeClients()
    with pytest.raises(PgError, match="set confirm: shop ") as info:
        restore(tmp_path, clients, confirm=confirm)
    assert info.value.kind == "not_confirmed" and clients.calls == []


def test_restore_refuses_another_target_unless_allowed(tmp_path):
    run(tmp_path, FakeClients())
    clients = FakeClients(probe=dict(PROBE, system_identifier="42"))
    with pytest.raises(PgError, match="another database .*system identifier 7412345678901234567 is not 42") as info:
        restore(tmp_path, clients)
    assert info.value.kind == "other_target" and not clients.restored
    result = restore(tmp_path, clients, allow_other_target=True)
    assert result["restored"] is True
    assert any("another database" in w for w in result["warnings"])


def test_restore_refuses_a_corrupted_snapshot(tmp_path):
    run(tmp_path, FakeClients())
    (tmp_path / "snaps" / "s1.dump").write_bytes(b"PGDMP flipped")
    clients = FakeClients()
    with pytest.raises(PgError, match="is corrupted"):
        restore(tmp_path, clients)
    assert not any("--single-transaction" in argv for argv, _env in clients.calls)


def test_restore_check_mode_restores_nothing(tmp_path):
    run(tmp_path, FakeClients())
    clients = FakeClients()
    result = restore(tmp_path, clients, check_mode=True)
    assert result["changed"] is True and result["restored"] is False
    assert result["applied_migrations"] == MIGRATIONS
    assert not any("--single-transaction" in argv for argv, _env in clients.calls)
    assert any("--list" in argv for argv, _env in clients.calls)


def test_restore_failure_says_the_database_is_unchanged(tmp_path):
    run(tmp_path, FakeClients())
    with pytest.raises(PgError, match="rolled back, so the database is as it was before") as info:
        restore(tmp_path, FakeClients(restore_rc=1))
    assert info.value.kind == "restore_failed"


def test_restore_checks_the_applied_migrations(tmp_path):
    run(tmp_path, FakeClients())
    with pytest.raises(PgError, match="applied migrations differ from the manifest") as info:
        restore(tmp_path, FakeClients(migrations_after=["shop.0001_initial", "shop.0002_x"]))
    assert info.value.kind == "restore_verify_failed" and info.value.details["restored"] is True


def test_restore_reports_extra_tables(tmp_path):
    run(tmp_path, FakeClients())
    clients = FakeClients(tables=TABLES + [{"schema": "public", "name": "shop_review", "estimate": 0}])
    result = restore(tmp_path, clients)
    assert result["extra_tables"] == ["public.shop_review"]
    assert any("shop_review" in w for w in result["warnings"])


def test_restore_unknown_name_and_replica(tmp_path):
    with pytest.raises(PgError, match="no snapshot nope in"):
        restore(tmp_path, FakeClients(), name="nope")
    run(tmp_path, FakeClients())
    with pytest.raises(PgError, match="read-only replica"):
        restore(tmp_path, FakeClients(probe=dict(PROBE, in_recovery=True)))
    with pytest.raises(PgError, match="needs name"):
        restore(tmp_path, FakeClients(), name=None)


# -- provider: command ----------------------------------------------------------------------------------------

def provider_args(**extra):
    args = dict(provider="command", provider_command=["/opt/provider", "create", "{name}", "{database}"],
                provider_check_command=["/opt/provider", "status", "{id}"], provider_poll_interval=1)
    args.update(extra)
    return args


def test_provider_snapshot_polls_until_available(tmp_path):
    clients = FakeClients(provider=[
        (0, 'calling the API\n{"id": "rds:s1", "status": "creating"}\n', ""),
        (0, '{"status": "creating"}\n', ""),
        (0, '{"status": "available", "size_gb": 20}\n', ""),
    ])
    result = run(tmp_path, clients, **provider_args())
    provider_calls = [argv for argv, _env in clients.calls if argv[0] == "/opt/provider"]
    assert provider_calls == [["/opt/provider", "create", "s1", "shop"], ["/opt/provider", "status", "rds:s1"],
                              ["/opt/provider", "status", "rds:s1"]]
    assert all("PGPASSWORD" not in env for argv, env in clients.calls if argv[0] == "/opt/provider")
    assert clients.tools("pg_dump") == 0
    assert result["provider_id"] == "rds:s1" and result["format"] == "provider"
    manifest = json.loads((tmp_path / "snaps" / "s1.json").read_text())
    assert manifest["provider"] == "command" and manifest["provider_id"] == "rds:s1"
    assert manifest["provider_check"] == {"status": "available", "size_gb": 20}
    assert manifest["applied_migrations"] == MIGRATIONS and manifest["fingerprint"]["database"] == "shop"
    assert os.listdir(tmp_path / "snaps") == ["s1.json"]

    # reused through max_age after the provider confirms it still exists
    clients = FakeClients(provider=[(0, '{"status": "available"}', "")])
    again = run(tmp_path, clients, name="s2", max_age="1h", **provider_args())
    assert again["reused"] is True and again["name"] == "s1" and again["provider_id"] == "rds:s1"


@pytest.mark.parametrize(("replies", "match"), [
    ([(1, "", "AccessDenied")], r"provider_command failed \(rc=1\): AccessDenied"),
    ([(0, '{"status": "creating"}', "")], "has no 'id'"),
    ([(0, "done", "")], "not JSON"),
    ([(0, '{"id": "x"}', ""), (0, '{"status": "failed"}', "")], "reports status 'failed'.$"),
    ([(0, '{"id": "x"}', "")] + [(0, '{"status": "creating"}', "")] * 4,
     r"'creating' after 3s \(provider_timeout 3s\)"),
])
def test_provider_failures(tmp_path, replies, match):
    clients = FakeClients(provider=list(replies))
    with pytest.raises(PgError, match=match):
        run(tmp_path, clients, **provider_args(provider_timeout=3))
    assert not (tmp_path / "snaps" / "s1.json").exists()


def test_provider_snapshot_cannot_be_restored(tmp_path):
    clients = FakeClients(provider=[(0, '{"id": "rds:s1"}', ""), (0, '{"status": "available"}', "")])
    run(tmp_path, clients, **provider_args())
    with pytest.raises(PgError, match="restore it with the provider's own tools"):
        restore(tmp_path, FakeClients())
