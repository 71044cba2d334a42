"""End to end: playbooks/rollback.yml on its own three-host sandbox fleet behind nginx.

The module's sandbox has its own base directory and takes its ports from a fixed range (18100-18999), away
from the ephemeral ports test_deploy_sandbox.py's sandbox gets, so the two never meet even when run in one
session. The tests run in file order, each on the fleet the previous one left:

- app rollback: a release whose app cannot boot stops the deploy at the first host; the rollback (auto
  picks app: only expand migrations ran) puts every host back on release 1 under load;
- reversing migrations: a release whose contract phase dropped a column after its rollout; the rollback
  (auto picks migrations) unapplies it under the lock, then switches every host back;
- restore: refused without the database name; with it, every host is stopped, the snapshot taken before
  the deploy restored (table checksums as at snapshot time), and the previous release started.
"""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from devtools.loadgen import LoadGenerator
from devtools.playbook import PlaybookRun, deploy_release, run_playbook
from devtools.sandbox import HOSTS, Sandbox, _read_env
from tests.e2e.test_deploy_sandbox import (
    applied_migrations,
    broken_artifact,
    connect,
    current_links,
    derived_artifact,
    explain,
    index_artifact,
)

pytestmark = pytest.mark.slow

RELEASE_2_MIGRATIONS = [
    "shop.0003_product_description",
    "shop.0004_order_channel",
    "shop.0005_orderevent",
    "shop.0006_order_created_index",
    "shop.0007_backfill_descriptions",
]
CONTRACT = "shop.0008_remove_product_description"
CONTRACT_MIGRATION = '''from django.db import migrations


class Migration(migrations.Migration):
    safedeploy_phase = "post"
    dependencies = [("shop", "0007_backfill_descriptions")]
    operations = [migrations.RemoveField(model_name="product", name="description")]
'''
CHECKSUMS = {
    table: f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '') FROM {table} t"
    for table in ("shop_customer", "shop_product", "shop_order", "shop_orderline", "django_migrations")
}


def port_in_range(low: int, high: int, *addresses: str) -> int:
    """The first port in [low, high) free on every one of ``addresses``."""
    for port in range(low, high):
        try:
            for address in addresses:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port in {low}-{high} free on {', '.join(addresses)}")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    app_port = port_in_range(18100, 18600, *(address for _name, address in HOSTS))
    box = Sandbox(tmp_path_factory.mktemp("rollback-sandbox"), lb_port=port_in_range(18600, 19000, "127.0.0.1"),
                  app_port=app_port)
    box.up(log=lambda *_: None)
    yield box
    box.stop_nginx()  # first: its keep-alive connections would hold each gunicorn for its graceful timeout
    box.down(purge=True, log=lambda *_: None)


@pytest.fixture(scope="module")
def db_env(sandbox):
    return _read_env(sandbox.db_env_file)


def rollback(sandbox: Sandbox, version: str, log_name: str, **extra_vars) -> PlaybookRun:
    extra_vars = {"rollback_report": str(sandbox.base / "reports" / f"deploy-{version}.json"), **extra_vars}
    return run_playbook(sandbox.inventory_dir / "hosts.ini", "rollback", extra_vars,
                        log=sandbox.base / "logs" / f"{log_name}.log")


def report(sandbox: Sandbox, name: str) -> dict:
    return json.loads((sandbox.base / "reports" / name).read_text())


def decision(run: PlaybookRun) -> list[str]:
    shown = run.task("Show the decision")
    assert len(shown) == 1, explain(run)
    return shown[0]["result"]["msg"]


def checksums(db_env: dict) -> dict[str, str]:
    with connect(db_env) as conn:
        return {table: conn.execute(query).fetchone()[0] for table, query in CHECKSUMS.items()}


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def on(version: str) -> dict[str, str]:
    return {name: version for name, _address in HOSTS}


def test_a_release_that_cannot_boot_is_rolled_back_to_release_1_under_load(sandbox, db_env):
    first = deploy_release(sandbox, "1.0.0")
    assert first.rc == 0, explain(first)
    artifact = broken_artifact(sandbox, "2.0.1")
    load = LoadGenerator(f"http://127.0.0.1:{sandbox.lb_port}", rate=20, duration=600)
    load.start()
    try:
        failed = deploy_release(sandbox, "2.0.1", release_artifact=str(artifact), release_health_deadline=15)
        links_after_failure = current_links(sandbox)
        back = rollback(sandbox, "2.0.1", "rollback-2.0.1")
    finally:
        summary = load.stop()
    assert failed.rc != 0
    assert links_after_failure == {"app1": "2.0.1", "app2": "1.0.0", "app3": "1.0.0"}

    # the deploy stopped in its rollout, yet its report already holds what to go back to
    started = report(sandbox, "deploy-2.0.1.json")
    assert started["status"] == "rollout_failed", started
    assert started["rollout"]["failed_host"] == "app1" and started["rollout"]["drained"] == ["app1"]
    assert started["previous_releases"] == on("1.0.0")
    assert started["migrations_before"]["shop"] == "0002_seed_products"
    assert "shop.0002_seed_products" in started["applied_before"]
    assert "shop.0003_product_description" not in started["applied_before"]
    assert started["snapshot"]["taken"] and started["snapshot"]["name"] == "predeploy-shop-2.0.1"

    # auto picks the app rollback: only expand migrations ran, release 1 works with them
    assert back.rc == 0, explain(back)
    shown = decision(back)
    assert shown[0].startswith("Rollback of release 2.0.1") and "mode app (auto)" in shown[0], shown
    assert "no contract (post-deploy) migration" in shown[1], shown
    assert "app1 2.0.1 -> 1.0.0" in shown[2], shown
    assert not back.task("Unapply back to the state before the deploy")
    assert sandbox.served_versions() == on("1.0.0")
    assert sandbox.drained_hosts() == []
    assert applied_migrations(db_env)[2:] == RELEASE_2_MIGRATIONS  # the schema stays
    # only the host the deploy broke was switched; no request failed, and some got release 1 after it
    assert [r["host"] for r in back.task("Point current at the new release", status="ok")] == ["app1"]
    assert summary["failed"] == 0, summary["failures_sample"]
    assert summary["total"] >= 100, summary

    done = report(sandbox, "rollback-2.0.1.json")
    assert done["mode"] == "app" and done["hosts"] == on("1.0.0")
    assert report(sandbox, "deploy-2.0.1.json")["rolled_back"]["mode"] == "app"


def test_unapplying_what_drops_data_is_refused_before_any_change(sandbox, db_env):
    """Rolling 2.0.1's expand migrations back would drop the columns and table they added: refused."""
    before = (applied_migrations(db_env), current_links(sandbox))
    refused = rollback(sandbox, "2.0.1", "rollback-2.0.1-migrations", rollback_mode="migrations")
    assert refused.rc != 0
    failed = refused.task("Refuse to unapply what cannot be reversed or would drop data", status="failed")
    assert len(failed) == 1, explain(refused)
    msg = failed[0]["result"]["msg"]
    assert "shop.0003_product_description: unapply-drops-data" in msg and "Nothing was changed" in msg
    assert "rollback_mode=restore -e rollback_confirm=shop" in msg
    assert (applied_migrations(db_env), current_links(sandbox)) == before
    assert sandbox.served_versions() == on("1.0.0")


def contract_artifact(sandbox: Sandbox):
    """2.2.0: release 2 without Product.description, dropped by a contract (post-deploy) migration."""
    def models(data: bytes) -> bytes:
        line = b"    description = models.TextField(null=True, blank=True)\n"
        assert line in data
        return data.replace(line, b"")

    def views(data: bytes) -> bytes:
        old = b', "description": p.description'
        assert old in data
        return data.replace(old, b"")

    return derived_artifact(sandbox, "2.2.0", {"shop/models.py": models, "shop/views.py": views},
                            {"shop/migrations/0008_remove_product_description.py": CONTRACT_MIGRATION})


def description_column(db_env: dict) -> bool:
    with connect(db_env) as conn:
        return conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'shop_product' "
                            "AND column_name = 'description'").fetchone()[0] == 1


def test_a_contract_migration_is_unapplied_then_every_host_goes_back(sandbox, db_env):
    """Fleet on 1.0.0, schema at 0007 (2.0.1's expand migrations stayed). 2.2.0's contract phase drops
    Product.description after its rollout: auto reverses it (RemoveField unapplies as an ADD COLUMN:
    reversible, drops nothing) under the lock, then switches every host back."""
    run = deploy_release(sandbox, "2.2.0", release_artifact=str(contract_artifact(sandbox)))
    assert run.rc == 0, explain(run)
    assert applied_migrations(db_env)[-1] == CONTRACT and not description_column(db_env)
    deployed = report(sandbox, "deploy-2.2.0.json")
    assert deployed["status"] == "complete" and deployed["previous_releases"] == on("1.0.0")
    assert deployed["migrations_before"]["shop"] == "0007_backfill_descriptions"
    assert deployed["post_migrations"] == [CONTRACT]
    assert deployed["snapshot"]["name"] == "predeploy-shop-2.2.0" and deployed["contract_snapshot"]["taken"]

    back = rollback(sandbox, "2.2.0", "rollback-2.2.0")
    assert back.rc == 0, explain(back)
    shown = decision(back)
    assert "mode migrations (auto)" in shown[0], shown
    assert f"contract phase applied {CONTRACT}" in shown[1], shown
    assert shown[3] == "Migrate back to: shop.0007_backfill_descriptions", shown
    unapplied = back.task("Unapply back to the state before the deploy")
    assert len(unapplied) == 1, explain(back)
    assert [m["id"] for m in unapplied[0]["result"]["results"][0]["unapplied"]] == [CONTRACT]
    # once, on the migration host, under the lock: its audit log says so
    audit = (sandbox.hosts_dir / "app1" / "shared" / "migrations-audit.log").read_text().splitlines()
    last = json.loads(audit[-1])
    assert last["outcome"] == "unapplied" and last["context"]["phase"] == "rollback", last
    assert [m["id"] for m in last["unapplied"]] == [CONTRACT] and last["lock"]["waited"] is not None
    # the schema is back where the deploy found it before any host was switched
    names = [r["task"] for r in back.results]
    assert names.index(unapplied[0]["task"]) < min(i for i, n in enumerate(names) if "Point current at" in n)
    assert applied_migrations(db_env)[-1] == "shop.0007_backfill_descriptions" and description_column(db_env)
    assert sorted(applied_migrations(db_env)) == sorted(m for m in deployed["applied_before"] if m.startswith("shop."))
    assert sandbox.served_versions() == on("1.0.0") and sandbox.drained_hosts() == []
    assert get_json(f"http://127.0.0.1:{sandbox.lb_port}/products/")
    assert report(sandbox, "rollback-2.2.0.json")["unapplied"][0]["id"] == CONTRACT


def test_restore_is_refused_without_confirmation_then_brings_the_snapshot_back(sandbox, db_env):
    """Fleet on 1.0.0. 2.3.0 snapshots, migrates, serves; then data changes. A restore without the
    database name stops nothing; with it, the tables are as at snapshot time and 1.0.0 serves again."""
    at_snapshot = checksums(db_env)
    run = deploy_release(sandbox, "2.3.0", release_artifact=str(index_artifact(sandbox, "2.3.0")))
    assert run.rc == 0, explain(run)
    assert (sandbox.snapshots / "predeploy-shop-2.3.0.dump").exists()
    with connect(db_env, autocommit=True) as conn:
        customer = conn.execute("INSERT INTO shop_customer (email, name, created_at) "
                                "VALUES ('late@example.com', 'late', now()) RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO shop_order (customer_id, status, total, created_at) "
                     "SELECT %s, 'new', g, now() FROM generate_series(1, 25) AS g", (customer,))
        conn.execute("UPDATE shop_product SET price = price + 1")
    changed = checksums(db_env)
    assert changed["shop_order"] != at_snapshot["shop_order"] and changed["shop_product"] != at_snapshot["shop_product"]

    refused = rollback(sandbox, "2.3.0", "rollback-2.3.0-unconfirmed", rollback_mode="restore")
    assert refused.rc != 0
    failed = refused.task("Check a restore is confirmed and has what it needs", status="failed")
    assert len(failed) == 1, explain(refused)
    assert "-e rollback_confirm=shop" in failed[0]["result"]["msg"]
    assert "no host was stopped" in failed[0]["result"]["msg"]
    assert not refused.task("Stop gunicorn") and not refused.task("Drain every host")
    assert sandbox.served_versions() == on("2.3.0") and sandbox.drained_hosts() == []
    assert checksums(db_env) == changed

    restored = rollback(sandbox, "2.3.0", "rollback-2.3.0-restore", rollback_mode="restore",
                        rollback_confirm="shop")
    assert restored.rc == 0, explain(restored)
    assert "mode restore" in decision(restored)[0]
    assert checksums(db_env) == at_snapshot
    assert applied_migrations(db_env)[-1] == "shop.0007_backfill_descriptions"
    assert sandbox.served_versions() == on("1.0.0") and sandbox.drained_hosts() == []
    assert current_links(sandbox) == on("1.0.0")
    # every host was stopped before the restore and started after it
    names = [r["task"] for r in restored.results]
    restore_at = names.index(next(n for n in names if "Restore the snapshot taken before the deploy" in n))
    assert max(i for i, n in enumerate(names) if "Stop gunicorn with the configured command" in n) < restore_at
    assert min(i for i, n in enumerate(names) if "Start gunicorn with the configured command" in n) > restore_at
    done = report(sandbox, "rollback-2.3.0.json")
    assert done["mode"] == "restore" and done["restored"]["snapshot"].endswith("predeploy-shop-2.3.0.dump")
