"""Unit tests of module_utils/_pg.py: environment, error messages, client selection."""

from __future__ import annotations

import os
import stat

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils import _pg
from ansible_collections.safedeploy.django.plugins.module_utils._pg import (
    Connection,
    PgError,
    classify_connection_error,
    parse_client_version,
    psql_argv,
    select_client_tools,
)
from ansible_collections.safedeploy.django.plugins.module_utils._secrets import scrub

SECRET = "Sup3r-s3cret-pw"
TARGET = {"host": "db.example", "port": 5432, "database": "shop", "user": "shop_app"}


def params(**overrides):
    base = dict(host=None, port=None, database="shop", user=None, password=None, passfile=None,
                sslmode=None, ca_cert=None, connect_timeout=None)
    base.update(overrides)
    return base


class TestChildEnv:
    def test_password_goes_to_pgpassword_only(self):
        conn = Connection.from_params(params(host="db", port=5433, user="app", password=SECRET))
        env = conn.child_env(base={})
        assert env["PGPASSWORD"] == SECRET
        assert env["PGHOST"] == "db" and env["PGPORT"] == "5433" and env["PGUSER"] == "app"
        assert env["PGDATABASE"] == "shop"
        assert [k for k, v in env.items() if v == SECRET] == ["PGPASSWORD"]
        assert SECRET not in repr(conn)

    def test_inherited_environment_used_when_options_absent(self):
        base = {"PGHOST": "envhost", "PGPORT": "6543", "PGUSER": "envuser", "PGPASSWORD": "envpw"}
        conn = Connection.from_params(params())
        env = conn.child_env(base=base)
        assert (env["PGHOST"], env["PGPORT"], env["PGUSER"], env["PGPASSWORD"]) == (
            "envhost", "6543", "envuser", "envpw",
        )
        assert conn.describe(base) == {"host": "envhost", "port": 6543, "database": "shop", "user": "envuser"}

    def test_explicit_passfile_beats_inherited_password(self):
        conn = Connection.from_params(params(passfile="/etc/pgpass"))
        env = conn.child_env(base={"PGPASSWORD": "stale"})
        assert "PGPASSWORD" not in env
        assert env["PGPASSFILE"] == "/etc/pgpass"

    def test_default_port_and_timeout(self):
        conn = Connection.from_params(params())
        assert conn.describe({})["port"] == 5432
        assert conn.child_env(base={})["PGCONNECT_TIMEOUT"] == "10"
        assert conn.child_env(base={"PGCONNECT_TIMEOUT": "3"})["PGCONNECT_TIMEOUT"] == "3"
        conn = Connection.from_params(params(connect_timeout=7, sslmode="require", ca_cert="/ca.pem"))
        env = conn.child_env(base={"PGCONNECT_TIMEOUT": "3"})
        assert (env["PGCONNECT_TIMEOUT"], env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("7", "require", "/ca.pem")

    def test_secrets_collects_param_and_env(self):
        conn = Connection.from_params(params(password=SECRET))
        assert set(conn.secrets({"PGPASSWORD": "other"})) == {SECRET, "other"}


def test_psql_argv_holds_no_connection_secret():
    argv = psql_argv("/usr/bin/psql", "SELECT 1")
    assert "--no-password" in argv  # never prompt: a prompt would hang the task
    assert not any("password=" in a.lower() for a in argv)


def test_scrub_replaces_every_occurrence():
    assert scrub(f"a {SECRET} b {SECRET}", [SECRET, ""]) == "a ******** b ********"


@pytest.mark.parametrize(
    ("stderr", "kind", "fragment"),
    [
        ('psql: error: connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication '
         'failed for user "shop_app"', "auth_failed", "authentication failed for user 'shop_app'"),
        ("psql: error: connection to server at \"db\" (10.0.0.1), port 5432 failed: fe_sendauth: no password "
         "supplied", "no_password", "none was given"),
        ('psql: error: connection to server at "127.0.0.1", port 1 failed: Connection refused\n\tIs the server '
         'running on that host and accepting TCP/IP connections?', "unreachable", "cannot reach PostgreSQL at "
         "db.example:5432"),
        ('psql: error: could not translate host name "nope" to address: Name or service not known',
         "unreachable", "Check host / port"),
        ('FATAL:  database "shopx" does not exist', "no_database", "database 'shopx' does not exist"),
        ('FATAL:  role "ghost" does not exist', "no_role", "role 'ghost' does not exist"),
    ],
)
def test_classify_connection_error(stderr, kind, fragment):
    err = classify_connection_error(stderr, TARGET)
    assert err is not None and err.kind == kind
    assert fragment in err.message


def test_classify_other_errors_returns_none():
    assert classify_connection_error('ERROR:  relation "x" does not exist', TARGET) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", (15, 18)),
        ("pg_dump (PostgreSQL) 18.0", (18, 0)),
        ("pg_dump (PostgreSQL) 9.6.24", (9, 6)),
        ("pg_dump (PostgreSQL) 17devel", (17, 0)),
        ("something else", None),
    ],
)
def test_parse_client_version(text, expected):
    assert parse_client_version(text) == expected


def _fake_bin(tmp_path, name):
    directory = tmp_path / name
    directory.mkdir()
    for tool in ("pg_dump", "pg_restore", "psql"):
        path = directory / tool
        path.write_text("#!/bin/sh\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(directory)


class TestSelectClientTools:
    def test_first_candidate_new_enough_wins(self, tmp_path):
        old, new = _fake_bin(tmp_path, "14"), _fake_bin(tmp_path, "16")
        versions = {os.path.join(old, "pg_dump"): (14, 9), os.path.join(new, "pg_dump"): (16, 2)}
        tools = select_client_tools(15, "15.4", candidates=[old, new], version_of=versions.get)
        assert tools.bin_dir == new and tools.version == (16, 2)
        assert tools.pg_restore == os.path.join(new, "pg_restore")

    def test_all_too_old_says_so(self, tmp_path):
        old = _fake_bin(tmp_path, "14")
        with pytest.raises(PgError) as info:
            select_client_tools(16, "16.1", candidates=[old], version_of=lambda p: (14, 9))
        assert info.value.kind == "client_too_old"
        assert "pg_dump is older than the server (16.1)" in info.value.message
        assert "14.9" in info.value.message and "postgresql-client-16" in info.value.message

    def test_explicit_bin_dir_too_old(self, tmp_path):
        old = _fake_bin(tmp_path, "14")
        with pytest.raises(PgError, match="older than the server"):
            select_client_tools(15, "15.2", bin_dir=old, version_of=lambda p: (14, 0))

    def test_explicit_bin_dir_without_tools(self, tmp_path):
        with pytest.raises(PgError, match="does not contain executable pg_dump") as info:
            select_client_tools(15, "15.2", bin_dir=str(tmp_path))
        assert info.value.kind == "client_missing"

    def test_nothing_installed(self, tmp_path):
        with pytest.raises(PgError, match="not found") as info:
            select_client_tools(15, "15.2", candidates=[str(tmp_path)])
        assert info.value.kind == "client_missing"


def test_candidate_bin_dirs_path_first_then_newest(tmp_path):
    for major in ("9.6", "13", "16"):
        (tmp_path / major / "bin").mkdir(parents=True)
    dirs = _pg.candidate_bin_dirs(which=lambda name: "/usr/bin/pg_dump", globs=[str(tmp_path / "*" / "bin")])
    assert dirs == ["/usr/bin", str(tmp_path / "16" / "bin"), str(tmp_path / "13" / "bin"),
                    str(tmp_path / "9.6" / "bin")]


def test_ssl_client_certificate_options_reach_the_environment():
    conn = Connection.from_params(params(ssl_cert="/etc/pg/client.crt", ssl_key="/etc/pg/client.key"))
    env = conn.child_env(base={})
    assert env["PGSSLCERT"] == "/etc/pg/client.crt" and env["PGSSLKEY"] == "/etc/pg/client.key"
    spec = _pg.connection_argument_spec()
    assert spec["password"]["no_log"] is True
    assert spec["ssl_cert"]["type"] == spec["ssl_key"]["type"] == "path"


FAKE_PSQL = r'''#!{python}
import sys
for line in sys.stdin:
    line = line.rstrip("\n")
    if line.startswith("\\echo "):
        print(line[6:])
    elif "boom" in line:
        sys.stderr.write('psql:<stdin>:1: ERROR:  relation "boom" does not exist\n')
        sys.exit(3)
    elif "auth" in line:
        sys.stderr.write('FATAL:  password authentication failed for user "shop_app"\n')
        sys.exit(2)
    elif line.startswith("SELECT"):
        print('{{"sql": "%s"}}' % line.rstrip(";").replace('"', "'"))
        print("second line")
    sys.stdout.flush()
'''


class TestPsqlSession:
    def fake_psql(self, tmp_path):
        import sys

        path = tmp_path / "psql"
        path.write_text(FAKE_PSQL.format(python=sys.executable))
        path.chmod(0o755)
        return str(path)

    def test_statements_share_one_process_and_outputs_are_split_by_marker(self, tmp_path):
        session = _pg.PsqlSession(self.fake_psql(tmp_path), {"PGPASSWORD": SECRET}, TARGET, timeout=10)
        try:
            assert session.query("SELECT 1") == '{"sql": "SELECT 1"}\nsecond line\n'
            assert session.query("SET x = 1") == ""
            assert session.query("SELECT 2;") == '{"sql": "SELECT 2"}\nsecond line\n'
            pid = session.proc.pid
            assert session.query("SELECT 3").startswith('{"sql"') and session.proc.pid == pid
        finally:
            assert session.close() == 0

    def test_psql_dying_raises_with_its_error(self, tmp_path):
        session = _pg.PsqlSession(self.fake_psql(tmp_path), {}, TARGET, timeout=10)
        with pytest.raises(PgError, match='relation "boom" does not exist') as info:
            session.query("SELECT boom")
        assert info.value.kind == "query_failed"
        session = _pg.PsqlSession(self.fake_psql(tmp_path), {}, TARGET, timeout=10)
        with pytest.raises(PgError, match="authentication failed") as info:
            session.query("SELECT auth")
        assert info.value.kind == "auth_failed"

    def test_missing_psql(self, tmp_path):
        with pytest.raises(PgError, match="cannot run") as info:
            _pg.PsqlSession(str(tmp_path / "nope"), {}, TARGET)
        assert info.value.kind == "client_missing"


def test_quoting():
    assert _pg.quote_ident('a"b') == '"a""b"'
    assert _pg.quote_literal("it's") == "'it''s'"
