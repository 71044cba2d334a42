"""The sample shop (devtools/sample_app) and its release artifacts, against a real PostgreSQL.

The key property for the demo: release 2's migrations are backward-compatible,
so release 1's code keeps taking orders after they ran (during a rolling deploy
both releases serve at once), and they can be reversed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import psycopg
import pytest

from devtools import build_release

REPO = Path(__file__).resolve().parents[2]
TOP_LEVEL = {"manage.py", "RELEASE", "requirements.txt", "shopsite", "shop"}
RELEASE2_MIGRATIONS = [
    "0003_product_description",
    "0004_order_channel",
    "0005_orderevent",
    "0006_order_created_index",
    "0007_backfill_descriptions",
]

pytestmark = pytest.mark.slow


def unpack(tmp_path: Path, release: int, version: str) -> Path:
    artifact = tmp_path / f"shop-{version}.tar.gz"
    build_release.build(release, version, artifact)
    dest = tmp_path / "releases" / version
    dest.mkdir(parents=True)
    with tarfile.open(artifact) as tar:
        tar.extractall(dest, filter="data")
    return dest


def manage(release_dir: Path, env: dict[str, str] | None, *args: str, check: bool = True):
    full_env = {"PATH": os.environ["PATH"], "DJANGO_SECRET_KEY": "test-" + "k" * 40, **(env or {})}
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=release_dir, env=full_env,
        capture_output=True, check=False, text=True, timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


# Runs inside the release's own code (manage.py shell): the real views and models
# of that release, through Django's request handling, against the real database.
CLIENT_SCRIPT = """
import json
from django.test import Client
c = Client(raise_request_exception=False)
def answer(r):
    is_json = r.headers.get("Content-Type", "").startswith("application/json")
    return [r.status_code, json.loads(r.content) if is_json else r.content[:200].decode()]
out = {}
out["order"] = answer(c.post("/orders/", data=json.dumps(ORDER), content_type="application/json"))
out["products"] = answer(c.get("/products/"))
out["healthz"] = answer(c.get("/healthz"))
print("RESULT" + json.dumps(out))
"""


def exercise(release_dir: Path, env: dict[str, str], order: dict) -> dict:
    code = f"ORDER = {order!r}\n" + CLIENT_SCRIPT
    result = manage(release_dir, env, "shell", "-c", code)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def query(env: dict[str, str], sql: str) -> list[tuple]:
    with psycopg.connect(host=env["PGHOST"], port=env["PGPORT"], user=env["PGUSER"],
                         password=env["PGPASSWORD"], dbname=env["PGDATABASE"]) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.parametrize(("release", "version"), [(1, "1.0.0"), (2, "2.0.0")])
def test_artifact_layout(tmp_path, release, version):
    out = tmp_path / "a.tar.gz"
    assert build_release.build(release, version, out) is True
    with tarfile.open(out) as tar:
        names = tar.getnames()
        top = {name.split("/")[0] for name in names}
        assert top == TOP_LEVEL
        assert tar.extractfile("RELEASE").read().decode() == f"{version}\n"
        requirements = tar.extractfile("requirements.txt").read().decode()
        assert tar.getmember("manage.py").mode & 0o111
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    pins = [line for line in requirements.splitlines() if line and not line.startswith("#")]
    assert [p.split("==")[0] for p in pins] == ["Django", "psycopg[binary]", "gunicorn"]
    assert all("==" in p for p in pins), pins
    assert pins[0].startswith("Django==5.2.")
    migrations = sorted(n.rsplit("/", 1)[1][:-3] for n in names if n.startswith("shop/migrations/0"))
    expected = ["0001_initial", "0002_seed_products"] + (RELEASE2_MIGRATIONS if release == 2 else [])
    assert migrations == expected
    # reproducible: the same sources give the same bytes, and a rebuild reports "unchanged"
    first = out.read_bytes()
    assert build_release.build(release, version, out) is False
    assert build_release.build_bytes(release, version) == first


def test_build_release_cli_and_bad_input(tmp_path):
    out = tmp_path / "x" / "shop.tar.gz"
    ok = subprocess.run([sys.executable, "devtools/build_release.py", "--release", "2", "--version", "2.0.0",
                         "--out", str(out)], cwd=REPO, capture_output=True, check=False, text=True)
    assert ok.returncode == 0, ok.stderr
    assert out.exists() and "written" in ok.stdout
    bad = subprocess.run([sys.executable, "devtools/build_release.py", "--release", "9", "--version", "9",
                          "--out", str(out)], cwd=REPO, capture_output=True, check=False, text=True)
    assert bad.returncode != 0 and "no such release 9" in bad.stderr
    with pytest.raises(SystemExit, match="not usable as a directory name"):
        build_release.build_bytes(1, "../1.0")


@pytest.mark.parametrize(("release", "version"), [(1, "1.0.0"), (2, "2.0.0")])
def test_no_missing_migrations_and_collectstatic(tmp_path, pg_database, release, version):
    code = unpack(tmp_path, release, version)
    checked = manage(code, pg_database, "makemigrations", "--check", "--dry-run", check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "No changes detected" in checked.stdout
    manage(code, pg_database, "collectstatic", "--noinput")
    assert (code / "static" / "shop" / "shop.css").is_file()


def test_release2_migrations_keep_release1_working(tmp_path, pg_database):
    env = pg_database
    r1 = unpack(tmp_path, 1, "1.0.0")
    r2 = unpack(tmp_path, 2, "2.0.0")
    order = {"customer": "ada@example.com", "items": [{"sku": "TEA-001", "qty": 2}, {"sku": "CUP-001", "qty": 1}]}

    before = exercise(r1, env, order)
    status, health = before["healthz"]
    assert (status, health["status"], health["database"], health["pending_migrations"]) == (200, "ok", "ok", 2)

    manage(r1, env, "migrate", "--noinput")
    on_release1 = exercise(r1, env, order)
    assert on_release1["order"][0] == 201, on_release1
    assert on_release1["order"][1]["total"] == "25.00"
    assert on_release1["healthz"][1]["pending_migrations"] == 0

    # the new code sees its five migrations pending before they run
    too_early = exercise(r2, env, order)
    assert too_early["order"][0] == 500  # new code before its migrations: why migrate runs first
    pending = too_early["healthz"][1]
    assert pending["pending_migrations"] == 5
    assert pending["pending"] == [f"shop.{name}" for name in RELEASE2_MIGRATIONS]

    applied = manage(r2, env, "migrate", "--noinput").stdout
    for name in RELEASE2_MIGRATIONS:
        assert f"Applying shop.{name}... OK" in applied

    # release 1's code, unchanged, on release 2's schema: INSERTs without the new columns
    old_code = exercise(r1, env, order)
    assert old_code["order"][0] == 201, old_code
    assert old_code["products"][0] == 200 and len(old_code["products"][1]) == 5
    health = old_code["healthz"][1]
    assert (health["version"], health["pending_migrations"]) == ("1.0.0", 0)

    new_code = exercise(r2, env, {**order, "channel": "app"})
    assert new_code["order"][0] == 201 and new_code["order"][1]["channel"] == "app"
    assert new_code["healthz"][1]["version"] == "2.0.0"
    assert new_code["healthz"][1]["pending_migrations"] == 0
    assert all(p["description"] for p in new_code["products"][1])  # the data migration ran

    # the database default filled the column for release 1's orders
    channels = query(env, "SELECT id, channel FROM shop_order ORDER BY id")
    assert [c for _order_id, c in channels] == ["web", "web", "app"]
    indexes = {row[0] for row in query(env, "SELECT indexname FROM pg_indexes WHERE tablename = 'shop_order'")}
    assert "shop_order_created_idx" in indexes

    # and every release-2 migration can be undone (the rollback path), release 1 still working after
    manage(r2, env, "migrate", "shop", "0002_seed_products", "--noinput")
    columns = {row[0] for row in query(env, "SELECT column_name FROM information_schema.columns "
                                            "WHERE table_name IN ('shop_order', 'shop_product')")}
    assert "channel" not in columns and "description" not in columns
    assert exercise(r1, env, order)["order"][0] == 201


def test_healthz_reports_database_down(tmp_path, pg_database):
    r2 = unpack(tmp_path, 2, "2.0.0")
    env = {**pg_database, "PGPORT": "1"}  # nothing listens there
    result = exercise(r2, env, {"customer": "x@example.com", "items": [{"sku": "TEA-001"}]})
    status, body = result["healthz"]
    assert status == 503
    assert body["status"] == "error" and body["version"] == "2.0.0"
    assert body["database"].startswith("unavailable")
    assert pg_database["PGPASSWORD"] not in json.dumps(result)


def test_orders_reject_bad_input(tmp_path, pg_database):
    r1 = unpack(tmp_path, 1, "1.0.0")
    manage(r1, pg_database, "migrate", "--noinput")
    cases = [
        ({"customer": "not-an-email", "items": [{"sku": "TEA-001"}]}, "customer must be an email"),
        ({"customer": "a@example.com", "items": []}, "items must be a non-empty list"),
        ({"customer": "a@example.com", "items": [{"sku": "NOPE", "qty": 1}]}, "unknown sku: NOPE"),
        ({"customer": "a@example.com", "items": [{"sku": "TEA-001", "qty": 0}]}, "qty of TEA-001"),
    ]
    for order, message in cases:
        status, body = exercise(r1, pg_database, order)["order"]
        assert status == 400 and message in body["error"], (order, body)
    assert query(pg_database, "SELECT count(*) FROM shop_order") == [(0,)]
