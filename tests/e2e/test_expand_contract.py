"""End to end: renaming Customer.name to Customer.full_name in five releases (docs/expand-contract.md).

The module's sandbox has its own base directory and takes its ports from 16100-16999 (test_rollback.py's
sandbox uses 18100-18999, test_deploy_sandbox.py's ephemeral ports). 2.0.0 is deployed and customers are
added; then, under one steady load through nginx (reads, and POST /orders/ that read and create customers)
that runs from the first rename release to the last, the tests deploy in file order:

- 3.0.0 expand: full_name added nullable; the code writes both columns, reads name;
- the backfill (playbooks/backfill.yml, batched, outside the deploy): full_name = name where they differ;
- 4.0.0 backfilled: CHECK (full_name IS NOT NULL) NOT VALID, VALIDATE it, SET NOT NULL, drop the CHECK;
- 5.0.0 switch reads: the code reads full_name and still writes both (no migration);
- 6.0.0 stop using name: name made nullable, then removed from Django's state only;
- 7.0.0 contract: post-deploy, the column name dropped.

Every deploy passes the planner's gate at the default release_max_risk (medium) without a waiver, no
request fails, and both the previous and the new release answer requests while it rolls out. At the
end the names of the customers that existed before the rename are, byte for byte, in full_name.
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from devtools import build_release
from devtools.loadgen import LoadGenerator
from devtools.playbook import PlaybookRun, deploy_release, run_playbook
from devtools.sandbox import HOSTS, Sandbox, _read_env
from tests.e2e.test_deploy_sandbox import connect, explain
from tests.e2e.test_rollback import port_in_range

pytestmark = pytest.mark.slow

RENAME = {3: "3.0.0", 4: "4.0.0", 5: "5.0.0", 6: "6.0.0", 7: "7.0.0"}
SEEDED = 3000  # customers before the rename: the backfill does them in several batches
BATCH = 500
CHECK = "shop_customer_full_name_not_null"
# the load's customers are load<n>@example.com for n < LOAD_CUSTOMERS: the first SEEDED exist already
# (get_or_create reads them), the others are created by the load (get_or_create inserts them)
LOAD_CUSTOMERS = 2 * SEEDED
RATE = 10
FAST = {"release_health_deadline": 30}


def names_checksum(db_env: dict, column: str, max_id: int) -> str:
    """count:md5 of id:<column> of the customers up to max_id, in id order."""
    with connect(db_env) as conn:
        return conn.execute(
            f"SELECT count(*) || ':' || md5(string_agg(id || ':' || {column}, ',' ORDER BY id)) "
            "FROM shop_customer WHERE id <= %s", (max_id,)).fetchone()[0]


def column(db_env: dict, name: str) -> str | None:
    """is_nullable of shop_customer.<name> ('YES'/'NO'), None when there is no such column."""
    with connect(db_env) as conn:
        row = conn.execute("SELECT is_nullable FROM information_schema.columns "
                           "WHERE table_name = 'shop_customer' AND column_name = %s", (name,)).fetchone()
    return row[0] if row else None


def check_constraint(db_env: dict) -> bool | None:
    """convalidated of the CHECK on full_name, None when there is none."""
    with connect(db_env) as conn:
        row = conn.execute("SELECT convalidated FROM pg_constraint WHERE conname = %s", (CHECK,)).fetchone()
    return row[0] if row else None


def scalar(db_env: dict, sql: str, *params):
    with connect(db_env) as conn:
        return conn.execute(sql, params).fetchone()[0]


def order_for(sandbox: Sandbox, email: str) -> dict:
    """POST /orders/ through nginx for an existing customer; the answer names the customer."""
    body = json.dumps({"customer": email, "items": [{"sku": "TEA-001", "qty": 1}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{sandbox.lb_port}/orders/", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        return json.load(response)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    app_port = port_in_range(16100, 16600, *(address for _name, address in HOSTS))
    box = Sandbox(tmp_path_factory.mktemp("expand-contract-sandbox"),
                  lb_port=port_in_range(16600, 17000, "127.0.0.1"), app_port=app_port)
    box.up(log=lambda *_: None)
    for release, version in RENAME.items():
        build_release.build(release, version, box.artifacts / f"shop-{version}.tar.gz")
    yield box
    box.stop_nginx()  # first: its keep-alive connections would hold each gunicorn for its graceful timeout
    box.down(purge=True, log=lambda *_: None)


@pytest.fixture(scope="module")
def db_env(sandbox):
    return _read_env(sandbox.db_env_file)


@pytest.fixture(scope="module")
def before(sandbox, db_env):
    """2.0.0 everywhere, with SEEDED customers (some names empty, some not ASCII); what their names were."""
    run = deploy_release(sandbox, "2.0.0", **FAST)
    assert run.rc == 0, explain(run)
    with connect(db_env, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO shop_customer (email, name, created_at) "
            "SELECT 'load' || g || '@example.com', "
            "       CASE WHEN g %% 10 = 0 THEN '' ELSE 'Kundin ' || g || CASE WHEN g %% 7 = 0 THEN ' Ünal-Çelik' "
            "       ELSE '' END END, now() FROM generate_series(0, %s) AS g", (SEEDED - 1,))
        max_id = conn.execute("SELECT max(id) FROM shop_customer").fetchone()[0]
    return {"max_id": max_id, "names": names_checksum(db_env, "name", max_id)}


@pytest.fixture(scope="module")
def load(sandbox, before):
    """One steady load from the first rename release to the last."""
    generator = LoadGenerator(f"http://127.0.0.1:{sandbox.lb_port}", rate=RATE, duration=3000,
                              customers=LOAD_CUSTOMERS, seed=8)
    generator.start()
    yield generator
    generator.stop()


def deploy_under_load(sandbox: Sandbox, load: LoadGenerator, version: str, previous: str) -> PlaybookRun:
    """Deploy; then what every deploy of the rename must show."""
    seen_before = load.summary()["versions"]
    run = deploy_release(sandbox, version, **FAST)
    now = load.summary()
    assert run.rc == 0, explain(run)
    assert sandbox.served_versions() == {name: version for name, _address in HOSTS}
    assert sandbox.drained_hosts() == []
    # the gate passed at the default release_max_risk, with no waiver to lean on
    plan = run.task("Check for missing migrations and classify the pending ones")
    assert len(plan) == 1, explain(run)
    gate = plan[0]["result"]["gate"]
    assert gate["max_risk"] == "medium" and not gate["blocked"] and gate["waived"] == [], gate
    assert plan[0]["result"]["highest_risk"] in ("none", "low", "medium"), plan[0]["result"]["highest_risk"]
    # no request failed, and both releases answered requests while the new one rolled out
    assert now["failed"] == 0, now["failures_sample"]
    during = {v: n - seen_before.get(v, 0) for v, n in now["versions"].items() if n > seen_before.get(v, 0)}
    assert during.get(previous) and during.get(version), during
    assert now["by_endpoint"]["POST /orders/"]["ok"] > 0
    # the name of a customer from before the rename, read from name (steps 1-2) or full_name (3-5)
    assert order_for(sandbox, "load7@example.com")["customer_name"] == "Kundin 7 Ünal-Çelik"
    return run


def pending(run: PlaybookRun) -> list[tuple[str, str, str]]:
    """(migration, phase, risk) of what the deploy's plan found pending."""
    plan = run.task("Check for missing migrations and classify the pending ones")[0]["result"]["plan"]
    return [(m["id"], m["phase"], m["risk"]) for m in plan]


def rules(run: PlaybookRun) -> dict[str, list[tuple[str, str]]]:
    plan = run.task("Check for missing migrations and classify the pending ones")[0]["result"]["plan"]
    return {m["id"]: sorted((v["rule"], v["risk"]) for v in m["verdicts"]) for m in plan}


def applied(run: PlaybookRun, task: str) -> list[str]:
    results = run.task(task)
    assert len(results) == 1, explain(run)
    return [m["id"] for m in results[0]["result"].get("applied", [])]


def report(sandbox: Sandbox, version: str) -> dict:
    return json.loads((sandbox.base / "reports" / f"deploy-{version}.json").read_text())


def test_step_1_expand_adds_full_name_and_writes_both(sandbox, db_env, before, load):
    run = deploy_under_load(sandbox, load, "3.0.0", "2.0.0")
    assert pending(run) == [("shop.0008_customer_full_name", "pre", "low")]
    assert rules(run) == {"shop.0008_customer_full_name": [("add-nullable-column", "low")]}
    assert applied(run, "Apply the pending migrations once") == ["shop.0008_customer_full_name"]
    assert column(db_env, "full_name") == "YES" and column(db_env, "name") == "NO"
    # 3.0.0 writes both columns; 2.0.0, during the rollout, left full_name NULL: the backfill's work
    assert scalar(db_env, "SELECT count(*) FROM shop_customer WHERE full_name IS NOT NULL AND full_name <> name") == 0
    assert scalar(db_env, "SELECT bool_and(full_name IS NULL) FROM shop_customer WHERE id <= %s",
                  before["max_id"]) is True
    before["expanded_at"] = scalar(db_env, "SELECT now()")


def test_backfill_fills_full_name_in_batches_under_load(sandbox, db_env, before, load):
    todo = scalar(db_env, "SELECT count(*) FROM shop_customer WHERE full_name IS DISTINCT FROM name")
    assert todo >= SEEDED
    run = run_playbook(sandbox.inventory_dir / "hosts.ini", "backfill",
                       {"backfill_name": "customer-full-name", "backfill_table": "shop_customer",
                        "backfill_set": "full_name = name", "backfill_where": "full_name IS DISTINCT FROM name",
                        "backfill_batch_size": BATCH, "backfill_pause": 0.05},
                       log=sandbox.base / "logs" / "backfill-customer-full-name.log")
    assert run.rc == 0, explain(run)
    slices = run.task("Backfill in slices, one line per slice")
    assert len(slices) == 1 and slices[0]["host"] == "app1", explain(run)
    last = slices[0]["result"]["results"][-1]
    assert last["status"] == "finished", last
    assert last["rows_done_total"] == todo and last["batches_total"] >= todo // BATCH, last
    assert scalar(db_env, "SELECT count(*) FROM shop_customer WHERE full_name IS NULL") == 0
    assert scalar(db_env, "SELECT count(*) FROM shop_customer WHERE full_name IS DISTINCT FROM name") == 0
    assert load.summary()["failed"] == 0, load.summary()["failures_sample"]


def test_step_2_makes_full_name_not_null_through_a_validated_check(sandbox, db_env, load):
    run = deploy_under_load(sandbox, load, "4.0.0", "3.0.0")
    steps = ["shop.0009_customer_full_name_check", "shop.0010_validate_customer_full_name_check",
             "shop.0011_customer_full_name_not_null"]
    assert pending(run) == [(step, "pre", "low") for step in steps]
    # SET NOT NULL after the CHECK validated earlier in the same plan: catalog-change, not the scan under lock
    assert rules(run) == {"shop.0009_customer_full_name_check": [("catalog-change", "low")],
                          "shop.0010_validate_customer_full_name_check": [("catalog-change", "low")],
                          "shop.0011_customer_full_name_not_null": [("catalog-change", "low"),
                                                                    ("catalog-change", "low")]}
    assert applied(run, "Apply the pending migrations once") == steps
    assert column(db_env, "full_name") == "NO" and check_constraint(db_env) is None
    assert scalar(db_env, "SELECT count(*) FROM shop_customer WHERE full_name IS DISTINCT FROM name") == 0


def test_step_3_reads_full_name_without_a_migration(sandbox, db_env, load):
    run = deploy_under_load(sandbox, load, "5.0.0", "4.0.0")
    assert pending(run) == []
    assert applied(run, "Apply the pending migrations once") == []
    assert not run.task("Apply the post-deploy migrations once", status="ok")
    assert scalar(db_env, "SELECT count(*) FROM shop_customer WHERE full_name IS DISTINCT FROM name") == 0


def test_step_4_stops_using_name(sandbox, db_env, before, load):
    run = deploy_under_load(sandbox, load, "6.0.0", "5.0.0")
    assert pending(run) == [("shop.0012_customer_stop_using_name", "pre", "low")]
    assert rules(run) == {"shop.0012_customer_stop_using_name": [("catalog-change", "low"), ("state-only", "none")]}
    assert applied(run, "Apply the pending migrations once") == ["shop.0012_customer_stop_using_name"]
    assert column(db_env, "name") == "YES"  # still there, nullable: 6.0.0's INSERTs leave it out
    assert scalar(db_env, "SELECT count(*) FROM shop_customer WHERE name IS NULL AND full_name <> ''") > 0
    assert scalar(db_env, "SELECT count(*) FROM shop_customer WHERE name IS NOT NULL AND name <> full_name") == 0


def test_step_5_contract_drops_name_after_the_rollout(sandbox, db_env, load):
    run = deploy_under_load(sandbox, load, "7.0.0", "6.0.0")
    assert pending(run) == [("shop.0013_remove_customer_name", "post", "medium")]
    assert rules(run) == {"shop.0013_remove_customer_name": [("remove-field", "medium"), ("state-only", "none")]}
    assert applied(run, "Apply the pending migrations once") == []
    assert applied(run, "Apply the post-deploy migrations once") == ["shop.0013_remove_customer_name"]
    done = report(sandbox, "7.0.0")
    assert done["post_migrations"] == ["shop.0013_remove_customer_name"] and done["contract_snapshot"]["taken"]
    assert column(db_env, "name") is None


def test_the_names_are_intact_and_every_request_succeeded(sandbox, db_env, before, load):
    summary = load.stop()
    assert summary["failed"] == 0, summary["failures_sample"]
    assert set(RENAME.values()) | {"2.0.0"} <= set(summary["versions"]), summary["versions"]
    assert summary["by_endpoint"]["POST /orders/"]["ok"] >= 100, summary["by_endpoint"]
    # the customers that existed before the rename: the same names, now in full_name
    assert names_checksum(db_env, "full_name", before["max_id"]) == before["names"]
    # the load's new customers all have a full_name: from 3.0.0 on, the local part of their email;
    # the few 2.0.0 created while 3.0.0 rolled out got '' from 2.0.0 and the backfill
    created = scalar(db_env, "SELECT count(*) FROM shop_customer WHERE id > %s", before["max_id"])
    assert created >= 50, created
    assert scalar(db_env, "SELECT count(*) FROM shop_customer WHERE id > %s AND created_at > %s "
                  "AND full_name <> split_part(email, '@', 1)", before["max_id"], before["expanded_at"]) == 0
    assert scalar(db_env, "SELECT count(*) FROM shop_customer WHERE id > %s AND full_name <> '' "
                  "AND full_name <> split_part(email, '@', 1)", before["max_id"]) == 0
    assert column(db_env, "full_name") == "NO" and column(db_env, "name") is None


def test_the_releases_share_one_venv_and_pruning_keeps_only_linked_ones(sandbox):
    """Every release has the same requirements.txt: one venv per host, built once (release_venv_reuse)."""
    for name, _address in HOSTS:
        root = sandbox.hosts_dir / name
        links = {venv.parent.name: os.readlink(venv) for venv in (root / "releases").glob("*/venv")}
        assert len(links) == 5, links  # release_keep_releases: 7 releases deployed, 2 pruned
        assert len(set(links.values())) == 1, links
        assert sorted(str(venv) for venv in (root / "shared" / "venvs").iterdir()) == sorted(set(links.values()))
