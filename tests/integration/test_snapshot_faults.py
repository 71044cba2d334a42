"""pg_snapshot under real faults, and its newer features, through real Ansible and a real PostgreSQL.

Every fault must fail clearly and leave nothing that looks like a snapshot: no archive
without ``.partial`` (``<name>.dump`` / ``<name>.dir``), no checksum file, no manifest.
The faults are real: pg_dump killed by pid while it writes, a full filesystem (a 2 MB
tmpfs), a read-only mount (root ignores file modes, not a read-only mount), a wrong
password, bytes flipped in an archive. The features: the directory format with parallel
jobs, a test restore into a scratch database, the manifest, max_age reuse, retention,
restore round trips, and a provider command (a fake one, in Python).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from devtools import ansible_task

MODULE = "safedeploy.django.pg_snapshot"

pytestmark = pytest.mark.slow


def run_task(tmp_path: Path, args: dict, **kwargs) -> tuple[dict, subprocess.CompletedProcess]:
    """One pg_snapshot task with ansible-playbook; the caller's libpq environment is cleared."""
    return ansible_task.run_task(tmp_path, MODULE, args, clear_libpq=True, **kwargs)


def conn_args(db: dict, **extra) -> dict:
    args = {"host": db["PGHOST"], "port": int(db["PGPORT"]), "database": db["PGDATABASE"],
            "user": db["PGUSER"], "password": db["PGPASSWORD"]}
    args.update(extra)
    return args


def ok(result: dict) -> dict:
    assert not result.get("failed"), result.get("msg")
    return result


def files(dest: Path) -> list[str]:
    return sorted(os.listdir(dest)) if dest.exists() else []


def assert_no_snapshot(dest: Path, name: str = "s1") -> None:
    """Nothing that looks like a valid snapshot: no archive, checksum or manifest, no partial left."""
    left = files(dest)
    assert not [f for f in left if f.startswith((f"{name}.", f".{name}."))], left


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sql(pg_cluster, db: dict, statement: str) -> str:
    return pg_cluster.psql(statement, db["PGDATABASE"])


@pytest.fixture()
def shop_db(pg_cluster, pg_database):
    """pg_database with a product table and a Django-like migrations table, owned by the app role."""
    pg_cluster.psql(
        "CREATE TABLE shop_product (id int PRIMARY KEY, sku text NOT NULL, price numeric);"
        "INSERT INTO shop_product SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, 5000) g;"
        "CREATE TABLE django_migrations (id serial PRIMARY KEY, app text, name text, applied timestamptz);"
        "INSERT INTO django_migrations (app, name, applied) VALUES ('contenttypes', '0001_initial', now()),"
        " ('shop', '0001_initial', now()), ('shop', '0002_product_price', now());"
        "ALTER TABLE shop_product OWNER TO app_owner; ALTER TABLE django_migrations OWNER TO app_owner;",
        pg_database["PGDATABASE"],
    )
    return pg_database


@pytest.fixture()
def big_db(pg_cluster, pg_database):
    """About 7 MB of hardly compressible rows: pg_dump needs a while and more than 2 MB."""
    pg_cluster.psql(
        "CREATE TABLE big (id int PRIMARY KEY, payload text);"
        "INSERT INTO big SELECT g, md5(random()::text) || md5(random()::text) FROM generate_series(1, 100000) g;"
        "ALTER TABLE big OWNER TO app_owner;",
        pg_database["PGDATABASE"],
    )
    return pg_database


@contextmanager
def small_filesystem(where: Path, size: str, read_only: bool = False):
    """A real small filesystem at ``where``: tmpfs, else a loop-mounted ext4 image; skip if neither works."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    attempt = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                             text=True, check=False)
    image = None
    if attempt.returncode != 0:
        image = where.parent / (where.name + ".img")
        subprocess.run(["truncate", "-s", size.upper(), str(image)], check=True)
        made = subprocess.run(["mkfs.ext4", "-q", str(image)], capture_output=True, text=True, check=False)
        loop = subprocess.run(["mount", "-o", "loop" + (",ro" if read_only else ""), str(image), str(where)],
                              capture_output=True, text=True, check=False)
        if made.returncode != 0 or loop.returncode != 0:
            pytest.skip(f"cannot mount a small filesystem here (tmpfs: {attempt.stderr.strip()}; "
                        f"loop ext4: {(made.stderr + loop.stderr).strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        if image is not None:
            image.unlink(missing_ok=True)


# -- faults ------------------------------------------------------------------------------------------

def test_pg_dump_killed_by_pid_while_writing(tmp_path, big_db, pg_cluster):
    """A bin_dir whose pg_dump starts the real one, waits until it has written 64 kB, and kills it by pid."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("psql", "pg_restore"):
        (bin_dir / tool).symlink_to(pg_cluster.bindir / tool)
    real = pg_cluster.bindir / "pg_dump"
    log = tmp_path / "killed.log"
    (bin_dir / "pg_dump").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then exec {real} --version; fi\n'
        'prev=""; for a in "$@"; do [ "$prev" = "--file" ] && out="$a"; prev="$a"; done\n'
        f'{real} "$@" &\n'
        "pid=$!\n"
        'while [ "$(stat -c %s "$out" 2>/dev/null || echo 0)" -lt 65536 ]; do\n'
        '  kill -0 $pid 2>/dev/null || { echo "pg_dump finished before it was killed" >&2; exit 99; }\n'
        "  sleep 0.01\n"
        "done\n"
        f'echo "killed $pid at $(stat -c %s "$out") bytes" > {log}\n'
        "kill -9 $pid\n"
        "wait $pid\n"
    )
    (bin_dir / "pg_dump").chmod(0o755)
    dest = tmp_path / "snaps"
    result, _proc = run_task(tmp_path, conn_args(big_db, dest=str(dest), name="s1", bin_dir=str(bin_dir),
                                                 compress=0))
    assert log.exists(), result.get("msg")
    assert result["failed"] is True and result["error_kind"] == "dump_failed", result["msg"]
    assert result["msg"].startswith("pg_dump failed (rc=137) (probably killed by signal 9); no snapshot was written.")
    assert_no_snapshot(dest)


def test_destination_full(tmp_path, big_db):
    with small_filesystem(tmp_path / "full", "2m") as mount:
        dest = mount / "snaps"
        result, _proc = run_task(tmp_path, conn_args(big_db, dest=str(dest), name="s1", compress=0))
        left = files(dest)
        usage = os.statvfs(mount)
        free = usage.f_bavail * usage.f_frsize
    assert result["failed"] is True and result["error_kind"] == "dest_full", result["msg"]
    assert result["msg"].startswith(f"dest {dest} is full (No space left on device)")
    assert "no snapshot was written" in result["msg"]
    assert left == [], left
    assert free > 1_500_000, "the partial file must have been removed"


def test_wrong_password_fails_and_never_shows_it(tmp_path, shop_db):
    dest = tmp_path / "snaps"
    wrong = "wrong-pw-" + os.urandom(5).hex()
    result, proc = run_task(tmp_path, conn_args(shop_db, dest=str(dest), name="s1", password=wrong,
                                                format="directory", jobs=2), verbosity=3)
    assert result["failed"] is True and result["error_kind"] == "auth_failed"
    assert result["msg"].startswith(f"PostgreSQL authentication failed for user 'app_owner' on database "
                                    f"'{shop_db['PGDATABASE']}'")
    assert wrong not in proc.stdout + proc.stderr + json.dumps(result)
    assert "AnsiballZ_pg_snapshot" in proc.stdout + proc.stderr  # -vvv output was searched
    assert not dest.exists()


def test_destination_not_writable_even_for_root(tmp_path, shop_db):
    # as root, file modes (chmod 0500) do not stop writes; a read-only mount does
    with small_filesystem(tmp_path / "ro", "1m", read_only=True) as mount:
        result, _proc = run_task(tmp_path, conn_args(shop_db, dest=str(mount), name="s1"))
        result_sub, _proc = run_task(tmp_path, conn_args(shop_db, dest=str(mount / "sub"), name="s1"))
        left = files(mount)
    assert result["failed"] is True and result["error_kind"] == "dest"
    assert result["msg"].startswith(f"dest {mount} is not writable by uid {os.geteuid()}")
    assert result_sub["failed"] is True
    assert result_sub["msg"].startswith(f"cannot create dest {mount / 'sub'}: {mount} is not writable")
    assert left == []

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    result, _proc = run_task(tmp_path, conn_args(shop_db, dest=str(blocker / "snaps"), name="s1"))
    assert result["failed"] is True and result["error_kind"] == "dest"
    assert result["msg"] == f"cannot create dest {blocker / 'snaps'}: {blocker} is not a directory."


def test_corrupted_dump_is_not_reused_by_max_age_nor_restored(tmp_path, shop_db, pg_cluster):
    dest = tmp_path / "snaps"
    ok(run_task(tmp_path, conn_args(shop_db, dest=str(dest), name="s1"))[0])
    dump = dest / "s1.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))

    result = ok(run_task(tmp_path, conn_args(shop_db, dest=str(dest), name="s2", max_age="1h"))[0])
    assert result["changed"] is True and result["reused"] is False and result["name"] == "s2"
    assert any("snapshot s1" in w and "was not reused" in w and "is corrupted" in w
               for w in result.get("warnings", [])), result.get("warnings")
    assert (dest / "s2.dump").exists() and dump.read_bytes() == bytes(data)  # left for inspection

    sql(pg_cluster, shop_db, "UPDATE shop_product SET price = 0")
    result, _proc = run_task(tmp_path, conn_args(shop_db, dest=str(dest), name="s1", state="restored",
                                                 confirm=shop_db["PGDATABASE"]))
    assert result["failed"] is True and result["error_kind"] == "corrupt"
    assert result["msg"].startswith(f"snapshot {dump} is corrupted")
    assert sql(pg_cluster, shop_db, "SELECT sum(price) FROM shop_product") == "0", "the database was touched"


# -- features ---------------------------------------------------------------------------------------

def test_directory_format_with_two_jobs_and_a_test_restore(tmp_path, shop_db, pg_cluster):
    dest = tmp_path / "snaps"
    result = ok(run_task(tmp_path, conn_args(shop_db, dest=str(dest), name="d1", format="directory", jobs=2,
                                             test_restore=True))[0])
    archive = dest / "d1.dir"
    assert files(dest) == ["d1.dir", "d1.dir.sha256", "d1.json"]
    assert result["path"] == str(archive) and result["format"] == "directory"
    assert "--jobs=2" in result["command"] and any(a.startswith("--snapshot=") for a in result["command"])
    assert mode(dest) == 0o700 and mode(archive) == 0o700
    assert all(mode(f) == 0o600 for f in archive.iterdir()) and (archive / "toc.dat").exists()
    assert mode(dest / "d1.json") == mode(dest / "d1.dir.sha256") == 0o600
    check = subprocess.run(["sha256sum", "-c", "d1.dir.sha256"], cwd=dest, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    listing = (dest / "d1.dir.sha256").read_bytes()
    assert result["sha256"] == hashlib.sha256(listing).hexdigest() == result["manifest"]["sha256"]

    test = result["test_restore"]
    assert re.fullmatch(r"t_[a-z0-9_]+_sdverify_[0-9a-f]{8}", test["database"]), test
    assert test["tables_checked"] == 2 and test["mismatches"] == [] and test["dropped"] is True
    assert test["row_counts"] == {"public.shop_product": 5000, "public.django_migrations": 3}
    assert test["compared_with"] == "exact row counts in the dump's snapshot"
    assert result["manifest"]["row_counts"] == test["row_counts"]
    assert result["manifest"]["consistent_snapshot"] is True
    assert pg_cluster.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%\\_sdverify\\_%'") == "0"


def test_test_restore_needs_createdb(tmp_path, shop_db, pg_cluster):
    pg_cluster.psql("ALTER ROLE app_owner NOCREATEDB")
    try:
        dest = tmp_path / "snaps"
        result, _proc = run_task(tmp_path, conn_args(shop_db, dest=str(dest), name="s1", test_restore=True))
    finally:
        pg_cluster.psql("ALTER ROLE app_owner CREATEDB")
    assert result["failed"] is True and result["error_kind"] == "no_createdb"
    assert "lacks the CREATEDB right" in result["msg"] and "test_restore: false" in result["msg"]
    assert_no_snapshot(dest)


def test_manifest_content(tmp_path, shop_db, pg_cluster):
    dest = tmp_path / "snaps"
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    result = ok(run_task(tmp_path, conn_args(shop_db, dest=str(dest), name="m1"))[0])
    manifest = json.loads((dest / "m1.json").read_text())
    assert manifest == result["manifest"]
    sysid = pg_cluster.psql("SELECT system_identifier FROM pg_control_system()")
    version = pg_cluster.psql("SHOW server_version")
    assert manifest["collection"] == "safedeploy.django" and manifest["kind"] == "pg_snapshot"
    assert manifest["fingerprint"] == {
        "host": "127.0.0.1", "port": int(shop_db["PGPORT"]), "database": shop_db["PGDATABASE"], "user": "app_owner",
        "server_version": version, "server_version_num": int(pg_cluster.psql("SHOW server_version_num")),
        "system_identifier": sysid, "in_recovery": False,
    }
    pg_dump_version = subprocess.run([str(pg_cluster.bindir / "pg_dump"), "--version"], capture_output=True,
                                     text=True, check=True).stdout.split(") ", 1)[1].strip()
    assert manifest["pg_dump_version"] == pg_dump_version
    assert manifest["applied_migrations"] == ["contenttypes.0001_initial", "shop.0001_initial",
                                              "shop.0002_product_price"] == result["applied_migrations"]
    assert manifest["format"] == "custom" and manifest["provider"] == "pg_dump"
    assert manifest["file"] == "m1.dump" and manifest["size"] == (dest / "m1.dump").stat().st_size
    assert manifest["sha256"] == hashlib.sha256((dest / "m1.dump").read_bytes()).hexdigest()
    assert sorted(manifest["table_names"]) == ["public.django_migrations", "public.shop_product"]
    created = datetime.datetime.strptime(manifest["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert before <= created <= datetime.datetime.now(datetime.UTC)
    assert mode(dest / "m1.json") == 0o600


def test_max_age_reuse_and_retention(tmp_path, shop_db):
    dest = tmp_path / "snaps"
    for name in ("a", "b", "c"):
        ok(run_task(tmp_path, conn_args(shop_db, dest=str(dest), name=name))[0])
    # a snapshot of another database in the same directory, and a file without a manifest
    other = json.loads((dest / "a.json").read_text())
    other["name"] = "x"
    other["fingerprint"]["database"] = other["database"] = "another_db"
    for suffix in (".dump", ".dump.sha256"):
        (dest / f"x{suffix}").write_bytes((dest / f"a{suffix}").read_bytes())
    (dest / "x.json").write_text(json.dumps(other))
    (dest / "handmade.dump").write_bytes(b"not ours")

    result = ok(run_task(tmp_path, conn_args(shop_db, dest=str(dest), max_age="1h"))[0])
    assert result["changed"] is False and result["reused"] is True and result["name"] == "c"
    assert result["path"] == str(dest / "c.dump") and 0 <= result["age_seconds"] < 3600

    result = ok(run_task(tmp_path, conn_args(shop_db, dest=str(dest), name="d", keep=2))[0])
    assert result["changed"] is True and result["pruned"] == ["b", "a"]
    assert files(dest) == ["c.dump", "c.dump.sha256", "c.json", "d.dump", "d.dump.sha256", "d.json",
                           "handmade.dump", "x.dump", "x.dump.sha256", "x.json"]


def test_restore_round_trip(tmp_path, shop_db, pg_cluster):
    db = shop_db["PGDATABASE"]
    dest = tmp_path / "snaps"
    ok(run_task(tmp_path, conn_args(shop_db, dest=str(dest), name="before"))[0])
    expected = sql(pg_cluster, shop_db, "SELECT count(*), sum(price) FROM shop_product")
    sql(pg_cluster, shop_db, "UPDATE shop_product SET price = price * 2; DELETE FROM shop_product WHERE id > 4000;"
                             "INSERT INTO django_migrations (app, name) VALUES ('shop', '0003_more');")
    changed = sql(pg_cluster, shop_db, "SELECT count(*), sum(price) FROM shop_product")
    restore = conn_args(shop_db, dest=str(dest), name="before", state="restored")

    result, _proc = run_task(tmp_path, dict(restore, confirm="production"))
    assert result["failed"] is True and result["error_kind"] == "not_confirmed"
    assert f"set confirm: {db} " in result["msg"]

    result, _proc = run_task(tmp_path, dict(restore, confirm=db), check=True)
    assert ok(result)["changed"] is True and result["restored"] is False
    assert sql(pg_cluster, shop_db, "SELECT count(*), sum(price) FROM shop_product") == changed

    result = ok(run_task(tmp_path, dict(restore, confirm=db))[0])
    assert result["restored"] is True and result["changed"] is True and result["seconds"] >= 0
    assert result["applied_migrations"] == ["contenttypes.0001_initial", "shop.0001_initial",
                                            "shop.0002_product_price"]
    assert sql(pg_cluster, shop_db, "SELECT count(*), sum(price) FROM shop_product") == expected
    assert sql(pg_cluster, shop_db, "SELECT count(*) FROM django_migrations") == "3"

    # another database (a different fingerprint): refused, unless allow_other_target
    other = db[:50] + "_copy"
    pg_cluster.create_database(other, owner="app_owner")
    try:
        other_args = conn_args(dict(shop_db, PGDATABASE=other), dest=str(dest), name="before", state="restored",
                               confirm=other)
        result, _proc = run_task(tmp_path, other_args)
        assert result["failed"] is True and result["error_kind"] == "other_target"
        assert f"database '{db}' is not '{other}'" in result["msg"] and "allow_other_target" in result["msg"]
        assert pg_cluster.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", other) == "0"
        result = ok(run_task(tmp_path, dict(other_args, allow_other_target=True))[0])
        assert result["restored"] is True
        assert pg_cluster.psql("SELECT count(*), sum(price) FROM shop_product", other) == expected
    finally:
        pg_cluster.drop_database(other)


def test_failed_restore_leaves_the_database_as_it_was(tmp_path, shop_db, pg_cluster):
    db = shop_db["PGDATABASE"]
    dest = tmp_path / "snaps"
    ok(run_task(tmp_path, conn_args(shop_db, dest=str(dest), name="before"))[0])
    # after the snapshot: new data, a new migration row, and a view the restore's DROP TABLE trips over
    sql(pg_cluster, shop_db, "UPDATE shop_product SET price = 1; INSERT INTO django_migrations (app, name) "
                             "VALUES ('shop', '0003_view'); CREATE VIEW cheap AS SELECT * FROM shop_product;")
    state = "SELECT (SELECT sum(price) FROM shop_product), (SELECT count(*) FROM django_migrations)"
    before = sql(pg_cluster, shop_db, state)
    result, _proc = run_task(tmp_path, conn_args(shop_db, dest=str(dest), name="before", state="restored",
                                                 confirm=db))
    assert result["failed"] is True and result["error_kind"] == "restore_failed" and result["restored"] is False
    assert "rolled back, so the database is as it was before" in result["msg"]
    assert "depend" in result["msg"]  # pg_restore's own reason
    assert sql(pg_cluster, shop_db, state) == before == "5000|4"
    assert sql(pg_cluster, shop_db, "SELECT count(*) FROM cheap") == "5000"


FAKE_PROVIDER = r'''#!{python}
"""A stand-in for a cloud snapshot CLI: `create <name> <database>` / `status <id>`, state in a JSON file."""
import json, sys
state_file = {state!r}
try:
    state = json.load(open(state_file))
except FileNotFoundError:
    state = {{"snapshots": {{}}, "calls": []}}
state["calls"].append(sys.argv[1:])
if sys.argv[1] == "create":
    sid = "fake:" + sys.argv[2]
    state["snapshots"][sid] = {{"database": sys.argv[3], "polls": 0}}
    print("creating snapshot " + sid + " ...")
    print(json.dumps({{"id": sid, "status": "creating"}}))
elif sys.argv[1] == "status":
    snap = state["snapshots"].get(sys.argv[2])
    if snap is None:
        print("no such snapshot", file=sys.stderr)
        sys.exit(4)
    snap["polls"] += 1
    print(json.dumps({{"id": sys.argv[2], "status": "available" if snap["polls"] >= 2 else "creating"}}))
json.dump(state, open(state_file, "w"))
'''


def test_provider_command(tmp_path, shop_db):
    state = tmp_path / "provider-state.json"
    script = tmp_path / "fake-provider"
    script.write_text(FAKE_PROVIDER.format(python=sys.executable, state=str(state)))
    script.chmod(0o755)
    dest = tmp_path / "snaps"
    args = conn_args(shop_db, dest=str(dest), name="p1", provider="command",
                     provider_command=[str(script), "create", "{name}", "{database}"],
                     provider_check_command=[str(script), "status", "{id}"], provider_poll_interval=1)
    result = ok(run_task(tmp_path, args)[0])
    assert result["changed"] is True and result["provider_id"] == "fake:p1" and result["format"] == "provider"
    assert files(dest) == ["p1.json"]
    manifest = json.loads((dest / "p1.json").read_text())
    assert manifest["provider"] == "command" and manifest["provider_id"] == "fake:p1"
    assert manifest["provider_check"]["status"] == "available"
    assert manifest["applied_migrations"][-1] == "shop.0002_product_price"
    calls = json.loads(state.read_text())["calls"]
    assert calls == [["create", "p1", shop_db["PGDATABASE"]], ["status", "fake:p1"], ["status", "fake:p1"]]

    result = ok(run_task(tmp_path, dict(args, name="p2", max_age="1h"))[0])
    assert result["reused"] is True and result["name"] == "p1" and result["changed"] is False
    assert json.loads(state.read_text())["calls"][-1] == ["status", "fake:p1"]

    result, _proc = run_task(tmp_path, conn_args(shop_db, dest=str(dest), name="p1", state="restored",
                                                 confirm=shop_db["PGDATABASE"]))
    assert result["failed"] is True and "restore it with the provider's own tools" in result["msg"]
