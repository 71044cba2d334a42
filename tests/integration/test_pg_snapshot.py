"""pg_snapshot through real Ansible against a real PostgreSQL (fixtures from tests/conftest.py).

Faults are real too: a wrong password, a closed port, an immutable directory, and
pg_dump replaced by wrapper scripts (in a bin_dir) that die midway, truncate their
output or claim an old version. The wrappers also log the argv each client got, so
the tests can prove that the password never reaches a command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from devtools import ansible_task

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULE = "safedeploy.django.pg_snapshot"

pytestmark = pytest.mark.slow


def run_task(tmp_path: Path, module: str, args: dict, **kwargs) -> tuple[dict, subprocess.CompletedProcess]:
    """Run one task with ansible-playbook; the module must not depend on the caller's libpq environment."""
    return ansible_task.run_task(tmp_path, module, args, clear_libpq=True, **kwargs)


def conn_args(db: dict, **extra) -> dict:
    args = {"host": db["PGHOST"], "port": int(db["PGPORT"]), "database": db["PGDATABASE"],
            "user": db["PGUSER"], "password": db["PGPASSWORD"]}
    args.update(extra)
    return args


@pytest.fixture()
def shop_db(pg_cluster, pg_database):
    """pg_database with two tables of data owned by the app role."""
    name = pg_database["PGDATABASE"]
    pg_cluster.psql(
        "CREATE TABLE shop_product (id int PRIMARY KEY, sku text NOT NULL, price numeric);"
        "INSERT INTO shop_product SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, 5000) g;"
        "CREATE TABLE django_migrations (id serial PRIMARY KEY, app text, name text, applied timestamptz);"
        "INSERT INTO django_migrations (app, name, applied) VALUES ('shop', '0001_initial', now()),"
        " ('shop', '0002_product_price', now());"
        "ALTER TABLE shop_product OWNER TO app_owner; ALTER TABLE django_migrations OWNER TO app_owner;",
        name,
    )
    return pg_database


def snapshot_files(dest: Path) -> list[str]:
    return sorted(os.listdir(dest)) if dest.exists() else []


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_check_real_check_real(tmp_path, shop_db, pg_cluster):
    """The community.docker rhythm: check mode, real, check again, real again."""
    dest = tmp_path / "snaps"
    args = conn_args(shop_db, dest=str(dest), name="before-2.0.0")

    result, _proc = run_task(tmp_path, MODULE, args, check=True)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True and result["reused"] is False
    assert not dest.exists(), "check mode must not write anything"

    result, _proc = run_task(tmp_path, MODULE, args)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True and result["reused"] is False
    dump = dest / "before-2.0.0.dump"
    assert result["path"] == str(dump)
    assert snapshot_files(dest) == ["before-2.0.0.dump", "before-2.0.0.dump.sha256", "before-2.0.0.json"]
    assert mode(dest) == 0o700
    assert all(mode(dest / f) == 0o600 for f in snapshot_files(dest))
    digest = hashlib.sha256(dump.read_bytes()).hexdigest()
    assert result["sha256"] == digest and result["size"] == dump.stat().st_size > 0
    # the checksum file is what sha256sum -c expects
    check = subprocess.run(["sha256sum", "-c", "before-2.0.0.dump.sha256"], cwd=dest, capture_output=True,
                           check=False, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert sorted(result["tables"]) == ["public.django_migrations", "public.shop_product"]
    manifest = json.loads((dest / "before-2.0.0.json").read_text())
    assert manifest == result["manifest"]
    assert manifest["database"] == shop_db["PGDATABASE"] and manifest["user"] == "app_owner"
    assert manifest["port"] == int(shop_db["PGPORT"]) and manifest["host"] == "127.0.0.1"
    assert manifest["server_version_num"] // 10000 == 15
    assert manifest["sha256"] == digest and manifest["tables"] == 2
    assert manifest["applied_migrations"] == ["shop.0001_initial", "shop.0002_product_price"]
    assert shop_db["PGPASSWORD"] not in json.dumps(result)

    # the snapshot really restores: load it into a scratch database and count rows
    scratch = "restore_" + os.urandom(3).hex()
    pg_cluster.create_database(scratch, owner="app_owner")
    try:
        env = {**os.environ, **shop_db, "PGDATABASE": scratch}
        restore = subprocess.run([str(pg_cluster.bindir / "pg_restore"), "--no-owner", "--exit-on-error",
                                  "--dbname", scratch, str(dump)], env=env, capture_output=True, check=False, text=True)
        assert restore.returncode == 0, restore.stderr
        assert pg_cluster.psql("SELECT count(*), sum(price) FROM shop_product", scratch) == "5000|18753750.0"
    finally:
        pg_cluster.drop_database(scratch)

    result, _proc = run_task(tmp_path, MODULE, args, check=True)
    assert result["changed"] is False and result["reused"] is True and result["sha256"] == digest

    mtime = dump.stat().st_mtime_ns
    result, _proc = run_task(tmp_path, MODULE, args)
    assert result["changed"] is False and result["reused"] is True
    assert result["sha256"] == digest and sorted(result["tables"]) == sorted(manifest["table_names"])
    assert dump.stat().st_mtime_ns == mtime


def test_credentials_from_task_environment_and_default_name(tmp_path, shop_db):
    dest = tmp_path / "snaps"
    result, _proc = run_task(tmp_path, MODULE, {"database": shop_db["PGDATABASE"], "dest": str(dest)},
                             task_env={k: v for k, v in shop_db.items() if k != "PGDATABASE"})
    assert not result.get("failed"), result.get("msg")
    assert result["name"].startswith(shop_db["PGDATABASE"] + "-") and result["name"].endswith("Z")
    assert result["target"] == {"host": "127.0.0.1", "port": int(shop_db["PGPORT"]),
                                "database": shop_db["PGDATABASE"], "user": "app_owner"}
    assert (dest / f"{result['name']}.dump").exists()


def test_corrupted_snapshot_is_not_reused(tmp_path, shop_db):
    dest = tmp_path / "snaps"
    args = conn_args(shop_db, dest=str(dest), name="s1")
    result, _proc = run_task(tmp_path, MODULE, args)
    assert result["changed"] is True
    dump = dest / "s1.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))

    result, _proc = run_task(tmp_path, MODULE, args)
    assert result["failed"] is True and result["error_kind"] == "corrupt"
    assert result["msg"].startswith(f"snapshot {dump} is corrupted: its sha256 is ")
    assert "will not be reused" in result["msg"]
    assert dump.read_bytes() == bytes(data), "a corrupted snapshot must be left for inspection"


def test_password_never_on_a_command_line_nor_in_verbose_output(tmp_path, shop_db, pg_cluster):
    password = shop_db["PGPASSWORD"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.log"
    for tool in ("psql", "pg_dump", "pg_restore"):
        wrapper = bin_dir / tool
        wrapper.write_text(
            "#!/bin/sh\n"
            f'echo "{tool} $*" >> {log}\n'
            f'echo "{tool} PGPASSWORD=${{PGPASSWORD:+set}}" >> {log}\n'
            f'exec {pg_cluster.bindir / tool} "$@"\n'
        )
        wrapper.chmod(0o755)
    dest = tmp_path / "snaps"
    result, proc = run_task(tmp_path, MODULE, conn_args(shop_db, dest=str(dest), name="s1", bin_dir=str(bin_dir)),
                            verbosity=3)
    assert not result.get("failed"), result.get("msg")
    assert result["bin_dir"] == str(bin_dir)
    lines = log.read_text().splitlines()
    assert any(line.startswith("pg_dump --format=custom --no-password --file") for line in lines)
    assert "pg_dump PGPASSWORD=set" in lines and "psql PGPASSWORD=set" in lines
    assert password not in log.read_text()
    assert result["command"][:3] == [str(bin_dir / "pg_dump"), "--format=custom", "--no-password"]
    output = proc.stdout + proc.stderr
    assert "AnsiballZ_pg_snapshot" in output, "expected -vvv output"
    assert password not in output
    assert password not in json.dumps(result)


def test_wrong_password(tmp_path, shop_db):
    dest = tmp_path / "snaps"
    wrong = "not-the-password-" + os.urandom(4).hex()
    result, proc = run_task(tmp_path, MODULE, conn_args(shop_db, dest=str(dest), name="s1", password=wrong),
                            verbosity=3)
    assert result["failed"] is True and result["error_kind"] == "auth_failed"
    assert result["msg"].startswith(
        f"PostgreSQL authentication failed for user 'app_owner' on database '{shop_db['PGDATABASE']}' "
        f"at 127.0.0.1:{shop_db['PGPORT']}"
    )
    assert wrong not in proc.stdout + proc.stderr + json.dumps(result)
    assert not any(f.endswith(".dump") or ".partial" in f for f in snapshot_files(dest))


def test_unreachable_port(tmp_path, shop_db):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "snaps"
    result, _proc = run_task(tmp_path, MODULE, conn_args(shop_db, dest=str(dest), port=port, connect_timeout=3))
    assert result["failed"] is True and result["error_kind"] == "unreachable"
    assert result["msg"].startswith(f"cannot reach PostgreSQL at 127.0.0.1:{port} ")
    assert "Connection refused" in result["msg"]
    assert not dest.exists()


def test_dest_not_writable(tmp_path, shop_db):
    dest = tmp_path / "locked"
    dest.mkdir()
    if subprocess.run(["chattr", "+i", str(dest)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i not supported here")
    try:
        result, _proc = run_task(tmp_path, MODULE, conn_args(shop_db, dest=str(dest), name="s1"))
        result_sub, _proc = run_task(tmp_path, MODULE, conn_args(shop_db, dest=str(dest / "sub"), name="s1"))
    finally:
        subprocess.run(["chattr", "-i", str(dest)], check=True)
    assert result["failed"] is True and result["error_kind"] == "dest"
    assert result["msg"].startswith(f"dest {dest} is not writable by uid 0")
    assert result_sub["failed"] is True
    assert result_sub["msg"].startswith(f"cannot create dest {dest / 'sub'}: {dest} is not writable")
    assert snapshot_files(dest) == []

    afile = tmp_path / "afile"
    afile.write_text("x")
    result, _proc = run_task(tmp_path, MODULE, conn_args(shop_db, dest=str(afile), name="s1"))
    assert result["failed"] is True and "exists and is not a directory" in result["msg"]


def test_unknown_argument(tmp_path, shop_db):
    result, _proc = run_task(tmp_path, MODULE, conn_args(shop_db, dest=str(tmp_path / "d"), compression=9))
    assert result["failed"] is True
    assert "Unsupported parameters for (safedeploy.django.pg_snapshot) module: compression" in result["msg"]


def _pg_dump_wrapper(tmp_path: Path, pg_cluster, body: str) -> Path:
    """A bin_dir whose pg_dump runs the real one and then misbehaves as `body` says."""
    bin_dir = tmp_path / "badbin"
    bin_dir.mkdir()
    for tool in ("psql", "pg_restore"):
        (bin_dir / tool).symlink_to(pg_cluster.bindir / tool)
    wrapper = bin_dir / "pg_dump"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then exec {pg_cluster.bindir / "pg_dump"} --version; fi\n'
        f'{pg_cluster.bindir / "pg_dump"} "$@" || exit $?\n'
        'while [ $# -gt 0 ]; do [ "$1" = "--file" ] && out="$2"; shift; done\n'
        f"{body}\n"
    )
    wrapper.chmod(0o755)
    return bin_dir


def test_pg_dump_killed_midway_leaves_no_dump(tmp_path, shop_db, pg_cluster):
    bin_dir = _pg_dump_wrapper(tmp_path, pg_cluster, 'truncate -s 100 "$out"\nkill -9 $$')
    dest = tmp_path / "snaps"
    result, _proc = run_task(tmp_path, MODULE, conn_args(shop_db, dest=str(dest), name="s1", bin_dir=str(bin_dir)))
    assert result["failed"] is True and result["error_kind"] == "dump_failed"
    assert result["msg"].startswith("pg_dump was killed by signal 9; no snapshot was written.")
    assert snapshot_files(dest) == [], "neither a .dump nor a partial file may be left"


def test_truncated_dump_with_exit_0_is_caught(tmp_path, shop_db, pg_cluster):
    bin_dir = _pg_dump_wrapper(tmp_path, pg_cluster, 'truncate -s $(( $(stat -c %s "$out") / 2 )) "$out"\nexit 0')
    dest = tmp_path / "snaps"
    result, _proc = run_task(tmp_path, MODULE, conn_args(shop_db, dest=str(dest), name="s1", bin_dir=str(bin_dir)))
    assert result["failed"] is True and result["error_kind"] == "verify_failed"
    # pg_restore --list alone accepts a file cut in the data section; reading the data catches it
    assert "truncated or corrupt archive" in result["msg"]
    assert snapshot_files(dest) == []


def test_pg_dump_older_than_server(tmp_path, shop_db, pg_cluster):
    bin_dir = tmp_path / "oldbin"
    bin_dir.mkdir()
    for tool in ("psql", "pg_restore"):
        (bin_dir / tool).symlink_to(pg_cluster.bindir / tool)
    (bin_dir / "pg_dump").write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.9'\n")
    (bin_dir / "pg_dump").chmod(0o755)
    dest = tmp_path / "snaps"
    result, _proc = run_task(tmp_path, MODULE, conn_args(shop_db, dest=str(dest), bin_dir=str(bin_dir)))
    assert result["failed"] is True and result["error_kind"] == "client_too_old"
    assert result["msg"].startswith("pg_dump is older than the server (15.")
    assert f"{bin_dir / 'pg_dump'} 14.9" in result["msg"] and "postgresql-client-15" in result["msg"]
    assert not dest.exists()


def test_empty_database_snapshot_warns(tmp_path, pg_database):
    dest = tmp_path / "snaps"
    result, proc = run_task(tmp_path, MODULE, conn_args(pg_database, dest=str(dest), name="empty"))
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True and result["tables"] == []
    assert any("has no tables" in w for w in result.get("warnings", [])), result
    assert (dest / "empty.dump").exists()


def test_table_the_user_cannot_read_fails_cleanly(tmp_path, pg_database, pg_cluster):
    pg_cluster.psql("CREATE TABLE secret_stuff (id int); ", pg_database["PGDATABASE"])  # owned by postgres
    dest = tmp_path / "snaps"
    result, _proc = run_task(tmp_path, MODULE, conn_args(pg_database, dest=str(dest), name="s1"))
    assert result["failed"] is True and result["error_kind"] == "dump_failed"
    assert "permission denied for table secret_stuff" in result["msg"]
    assert snapshot_files(dest) == []
