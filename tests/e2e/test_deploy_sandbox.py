"""End to end: the deploy playbook on a real three-host gunicorn fleet behind nginx.

One sandbox (its own PostgreSQL, nginx and ports, under a temp dir) for the
whole module; the tests run in file order, each building on the fleet state the
previous one left, as an operator's sequence of deploys would.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import psycopg
import pytest

from devtools.loadgen import LoadGenerator
from devtools.pgcluster import Cluster, free_port
from devtools.playbook import deploy_release, run_playbook
from devtools.sandbox import HOSTS, Sandbox, _read_env

pytestmark = pytest.mark.slow

RELEASE_2_MIGRATIONS = [
    "shop.0003_product_description",
    "shop.0004_order_channel",
    "shop.0005_orderevent",
    "shop.0006_order_created_index",
    "shop.0007_backfill_descriptions",
]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    app_port = free_port(*(address for _name, address in HOSTS))
    box = Sandbox(tmp_path_factory.mktemp("sandbox"), lb_port=free_port(), app_port=app_port)
    box.up(log=lambda *_: None)
    yield box
    box.down(purge=True, log=lambda *_: None)


@pytest.fixture(scope="module")
def db_env(sandbox):
    return _read_env(sandbox.db_env_file)


def current_links(sandbox: Sandbox) -> dict[str, str | None]:
    links = {}
    for name, _address in HOSTS:
        link = sandbox.hosts_dir / name / "current"
        links[name] = Path(link.readlink()).name if link.is_symlink() else None
    return links


def connect(db_env: dict, **kwargs) -> psycopg.Connection:
    return psycopg.connect(host=db_env["PGHOST"], port=db_env["PGPORT"], user=db_env["PGUSER"],
                           password=db_env["PGPASSWORD"], dbname=db_env["PGDATABASE"], **kwargs)


def applied_migrations(db_env: dict) -> list[str]:
    with connect(db_env) as conn:
        rows = conn.execute("SELECT app || '.' || name FROM django_migrations WHERE app = 'shop' ORDER BY id")
        return [row[0] for row in rows]


def snapshot_files(sandbox: Sandbox) -> list[str]:
    return sorted(p.name for p in sandbox.snapshots.iterdir()) if sandbox.snapshots.exists() else []


def explain(run) -> str:
    return f"rc={run.rc}, log {run.log}:\n{run.output[-4000:]}"


def test_first_deploy_installs_release_1_everywhere(sandbox, db_env):
    run = deploy_release(sandbox, "1.0.0")
    assert run.rc == 0, explain(run)
    assert sandbox.served_versions() == {"app1": "1.0.0", "app2": "1.0.0", "app3": "1.0.0"}
    assert applied_migrations(db_env) == ["shop.0001_initial", "shop.0002_seed_products"]


def test_plan_playbook_reports_release_2_and_applies_nothing(sandbox, db_env):
    run = run_playbook(sandbox.inventory_dir / "hosts.ini", "plan",
                       {"release_version": "2.0.0", "release_artifact": str(sandbox.artifacts / "shop-2.0.0.tar.gz"),
                        "release_report_dir": str(sandbox.base / "plan-reports"), "release_plan_prechecks": True},
                       log=sandbox.base / "logs" / "plan-2.0.0.log")
    assert run.rc == 0, explain(run)
    reports = sorted(p.name for p in (sandbox.base / "plan-reports").iterdir())
    assert reports == ["migration-plan.json", "migration-plan.md", "migration-plan.sarif"]
    sarif = json.loads((sandbox.base / "plan-reports" / "migration-plan.sarif").read_text())
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in sarif["runs"][0]["results"]}
    assert "shop/migrations/0006_order_created_index.py" in uris, uris
    plan = run.task("Check for missing migrations and classify the pending ones")
    assert len(plan) == 1 and plan[0]["delegated_to"] == "app1"
    assert plan[0]["result"]["pending"] == RELEASE_2_MIGRATIONS
    assert plan[0]["result"]["highest_risk"] == "medium" and not plan[0]["result"]["gate"]["blocked"]
    assert "shop.0006_order_created_index" in "\n".join(run.task("Show the migration plan")[0]["result"]["msg"])
    # nothing applied, nothing switched; only the migration host got the release staged
    assert applied_migrations(db_env) == ["shop.0001_initial", "shop.0002_seed_products"]
    assert current_links(sandbox) == {"app1": "1.0.0", "app2": "1.0.0", "app3": "1.0.0"}
    staged = {name: (sandbox.hosts_dir / name / "releases" / "2.0.0").exists() for name, _address in HOSTS}
    assert staged == {"app1": True, "app2": False, "app3": False}


def test_wrong_database_is_refused_before_any_change(sandbox, db_env):
    run = deploy_release(sandbox, "2.0.0", release_expected_database="shop_staging")
    assert run.rc != 0
    refused = run.task("Confirm the target database", status="failed")
    assert len(refused) == 1, explain(run)
    assert "Refusing to migrate shop on 127.0.0.1" in refused[0]["result"]["msg"]
    assert "release_expected_database is 'shop_staging'" in refused[0]["result"]["msg"]
    # nothing changed: no migration, no snapshot, every host still on release 1
    assert applied_migrations(db_env) == ["shop.0001_initial", "shop.0002_seed_products"]
    assert not any(name.startswith("predeploy-shop-2.0.0") for name in snapshot_files(sandbox))
    assert current_links(sandbox) == {"app1": "1.0.0", "app2": "1.0.0", "app3": "1.0.0"}
    assert sandbox.served_versions() == {"app1": "1.0.0", "app2": "1.0.0", "app3": "1.0.0"}


def test_health_url_that_never_turns_healthy_stops_in_preflight(sandbox):
    run = deploy_release(sandbox, "2.0.0", release_healthcheck_path="/no-such-health")
    assert run.rc != 0
    failed = run.task("Fail when no running host answers its health URL", status="failed")
    assert len(failed) == 1, explain(run)
    assert "No host answers its health URL on the release running now" in failed[0]["result"]["msg"]
    assert "/no-such-health" in failed[0]["result"]["msg"]
    assert current_links(sandbox) == {"app1": "1.0.0", "app2": "1.0.0", "app3": "1.0.0"}
    assert not run.task("Point current at the new release")


def test_release_2_rolls_out_under_load_with_zero_failed_requests(sandbox, db_env):
    load = LoadGenerator(f"http://127.0.0.1:{sandbox.lb_port}", rate=25, duration=600)
    load.start()
    try:
        run = deploy_release(sandbox, "2.0.0")
    finally:
        summary = load.stop()
    assert run.rc == 0, explain(run)

    # the load really ran across the switch, and nothing failed
    assert summary["total"] >= 200, summary
    assert summary["failed"] == 0, summary["failures_sample"]
    assert set(summary["versions"]) == {"1.0.0", "2.0.0"}, summary["versions"]

    # migrate ran once, on one host, before any host was switched
    migrate = run.task("Apply the pending migrations once")
    assert len(migrate) == 1 and migrate[0]["status"] == "ok", explain(run)
    assert migrate[0]["delegated_to"] == "app1"
    assert [m["id"] for m in migrate[0]["result"]["applied"]] == RELEASE_2_MIGRATIONS
    switched = [r for r in run.results if "Point current at the new release" in r["task"]]
    assert run.results.index(migrate[0]) < run.results.index(switched[0])
    assert applied_migrations(db_env)[2:] == RELEASE_2_MIGRATIONS

    # the hosts were switched one at a time, each proven healthy before the next
    order = [r["host"] for r in run.results if "Prove the host healthy" in r["task"]]
    assert order == ["app1", "app2", "app3"]
    assert sandbox.served_versions() == {"app1": "2.0.0", "app2": "2.0.0", "app3": "2.0.0"}
    assert current_links(sandbox) == {"app1": "2.0.0", "app2": "2.0.0", "app3": "2.0.0"}

    # a verified snapshot exists, lists the application's tables, and is private
    dump = sandbox.snapshots / "predeploy-shop-2.0.0.dump"
    assert dump.exists() and dump.stat().st_mode & 0o077 == 0
    cluster = Cluster(sandbox.pg_dir)
    listing = subprocess.run([cluster.bin("pg_restore"), "--list", str(dump)], capture_output=True, text=True,
                             check=True).stdout
    for table in ("shop_order", "shop_product", "django_migrations"):
        assert f"TABLE public {table} " in listing

    report = json.loads((sandbox.base / "reports" / "deploy-2.0.0.json").read_text())
    assert report["plan"]["pending"] == RELEASE_2_MIGRATIONS
    assert report["hosts"] == {"app1": "2.0.0", "app2": "2.0.0", "app3": "2.0.0"}
    assert report["snapshot"]["path"] == str(dump)


def test_second_deploy_of_the_same_release_changes_nothing(sandbox, db_env):
    before = snapshot_files(sandbox)
    run = deploy_release(sandbox, "2.0.0", verbosity=3)
    assert run.rc == 0, explain(run)
    assert {host: counts["changed"] for host, counts in run.recap.items()} == {"app1": 0, "app2": 0, "app3": 0}
    assert run.task("Apply the pending migrations once")[0]["result"]["applied"] == []
    assert snapshot_files(sandbox) == before
    # even at -vvv the database password and Django's secret key never show
    for secret in (db_env["PGPASSWORD"], db_env["DJANGO_SECRET_KEY"]):
        assert secret not in run.output


def test_check_mode_on_a_converged_fleet_reports_no_change(sandbox):
    run = deploy_release(sandbox, "2.0.0", check=True)
    assert run.rc == 0, explain(run)
    assert {host: counts["changed"] for host, counts in run.recap.items()} == {"app1": 0, "app2": 0, "app3": 0}


def test_role_main_rolls_back_to_release_1_host_by_host_under_load(sandbox, db_env):
    """App rollback by deploying the previous release with the role's main entry point:
    release 1's code runs on release 2's (backward-compatible) schema, nothing is migrated."""
    load = LoadGenerator(f"http://127.0.0.1:{sandbox.lb_port}", rate=25, duration=600)
    load.start()
    try:
        run = run_playbook(sandbox.inventory_dir / "hosts.ini", str(Path(__file__).with_name("role_main.yml")),
                           {"release_version": "1.0.0",
                            "release_artifact": str(sandbox.artifacts / "shop-1.0.0.tar.gz"),
                            "release_report_dir": str(sandbox.base / "reports")},
                           log=sandbox.base / "logs" / "role-main-1.0.0.log")
    finally:
        summary = load.stop()
    assert run.rc == 0, explain(run)
    assert summary["failed"] == 0, summary["failures_sample"]
    assert run.task("Apply the pending migrations once")[0]["result"]["applied"] == []
    assert applied_migrations(db_env)[2:] == RELEASE_2_MIGRATIONS
    # one host at a time: each is switched, then proven healthy, before the next is switched
    switch, prove = "Point current at the new release", "Prove the host healthy"
    steps = [(switch if switch in r["task"] else prove, r["host"]) for r in run.results
             if switch in r["task"] or prove in r["task"]]
    hosts = [host for _step, host in steps[::2]]
    assert sorted(hosts) == ["app1", "app2", "app3"]
    assert steps == [step for host in hosts for step in ((switch, host), (prove, host))]
    assert sandbox.served_versions() == {"app1": "1.0.0", "app2": "1.0.0", "app3": "1.0.0"}


def derived_artifact(sandbox: Sandbox, version: str, edits: dict[str, object], added: dict[str, str] = ()) -> Path:
    """Release 2.0.0's code under a new version: ``edits`` maps a file to a function of its
    bytes, ``added`` maps new files to their text."""
    out = sandbox.artifacts / f"shop-{version}.tar.gz"
    with tarfile.open(sandbox.artifacts / "shop-2.0.0.tar.gz") as source, tarfile.open(out, "w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            if member.name == "RELEASE":
                data = f"{version}\n".encode()
            elif member.name in edits:
                data = edits[member.name](data)
            if data is not None:
                member.size = len(data)
            target.addfile(member, io.BytesIO(data) if data is not None else None)
        for name, text in dict(added).items():
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(text.encode()), 0o644
            target.addfile(member, io.BytesIO(text.encode()))
    return out


def broken_artifact(sandbox: Sandbox, version: str) -> Path:
    """A version whose WSGI module raises on import: it stages, plans and migrates fine,
    but gunicorn cannot boot it."""
    crash = b"\nraise RuntimeError('broken on purpose by the safedeploy e2e test')\n"
    return derived_artifact(sandbox, version, {"shopsite/wsgi.py": lambda data: data + crash})


def test_a_release_that_cannot_boot_stops_the_rollout_at_the_first_host(sandbox):
    """Fleet on 1.0.0 (after the previous test). 2.0.1 cannot boot: the rollout stops at the
    first host, which stays drained; the other hosts keep 1.0.0 and nginx keeps serving."""
    artifact = broken_artifact(sandbox, "2.0.1")
    load = LoadGenerator(f"http://127.0.0.1:{sandbox.lb_port}", rate=25, duration=600)
    load.start()
    try:
        run = deploy_release(sandbox, "2.0.1", release_artifact=str(artifact), release_health_deadline=15)
        after_failure = sandbox.served_versions()
        drained = sandbox.drained_hosts()
    finally:
        summary = load.stop()
    assert run.rc != 0
    failed = run.task("Stop the rollout and say where the fleet stands", status="failed")
    assert [r["host"] for r in failed] == ["app1"], explain(run)
    assert "stays out of the load balancer" in failed[0]["result"]["msg"]
    assert current_links(sandbox) == {"app1": "2.0.1", "app2": "1.0.0", "app3": "1.0.0"}
    assert after_failure == {"app1": None, "app2": "1.0.0", "app3": "1.0.0"}
    assert drained == ["app1"]
    assert not run.task("Point current at the new release", status="ok")[1:], "no host after app1 was switched"
    assert summary["failed"] == 0, summary["failures_sample"]

    # recovery: deploy the good release again; app1 comes back and rejoins the pool
    run = deploy_release(sandbox, "1.0.0")
    assert run.rc == 0, explain(run)
    assert sandbox.served_versions() == {"app1": "1.0.0", "app2": "1.0.0", "app3": "1.0.0"}
    assert sandbox.drained_hosts() == []


INDEX_MIGRATION = """from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0007_backfill_descriptions")]

    operations = [
        migrations.AddIndex(model_name="order", index=models.Index(fields=["total"], name="shop_order_total_idx")),
    ]
"""


def add_total_index(models_py: bytes) -> bytes:
    """shop/models.py of release 2 with the index of INDEX_MIGRATION declared."""
    old = b'indexes = [models.Index(fields=["created_at"], name="shop_order_created_idx")]'
    assert old in models_py
    return models_py.replace(old, old[:-1] + b', models.Index(fields=["total"], name="shop_order_total_idx")]')


def index_artifact(sandbox: Sandbox, version: str = "3.0.0", more: dict[str, str] | None = None) -> Path:
    """2.0.0 plus a plain (blocking) CREATE INDEX on shop_order (and ``more`` migrations)."""
    added = {"shop/migrations/0008_order_total_index.py": INDEX_MIGRATION, **(more or {})}
    return derived_artifact(sandbox, version, {"shop/models.py": add_total_index}, added)


def test_the_gate_blocks_a_blocking_index_on_a_big_table_until_a_valid_waiver(sandbox, db_env):
    """Fleet on 1.0.0, schema at 0007. With a million orders, 3.0.0's plain CREATE INDEX
    would block writes while it builds: the gate stops the deploy before any change, an
    expired waiver and an unapproved one do not count, a valid one lets it through."""
    with connect(db_env, autocommit=True) as conn:
        customer = conn.execute("INSERT INTO shop_customer (name, email, created_at) "
                                "VALUES ('bulk', 'bulk@example.com', now()) RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO shop_order (customer_id, status, total, created_at) "
                     "SELECT %s, 'new', g %% 1000, now() FROM generate_series(1, 1000000) AS g", (customer,))
        conn.execute("ANALYZE shop_order")
    artifact = str(index_artifact(sandbox))
    migration = "shop.0008_order_total_index"
    before = (applied_migrations(db_env), snapshot_files(sandbox), current_links(sandbox))

    blocked = deploy_release(sandbox, "3.0.0", release_artifact=artifact)
    assert blocked.rc != 0
    plan = blocked.task("Check for missing migrations and classify the pending ones")[0]["result"]
    assert plan["pending"] == [migration] and plan["highest_risk"] == "high", plan["gate"]
    stop = blocked.task("Stop before any change when the plan is too risky", status="failed")
    assert len(stop) == 1, explain(blocked)
    assert migration in stop[0]["result"]["msg"]
    high = [v for m in plan["plan"] for v in m["verdicts"] if v["risk"] == "high"]
    rules = [v["rule"] for v in high]
    assert rules == ["create-index-blocking"], plan["plan"]
    # the verdict names the numbers that decided it
    assert re.search(r"shop_order: ~1,00\d,\d{3} rows, [\d.,]+ MiB.*: rows >= large_table_rows 1,000,000",
                     high[0]["decided_by"]), high[0]["decided_by"]
    assert high[0]["lock"] == "SHARE" and plan["report_sarif"]["runs"][0]["results"]

    # Rejected: an expired waiver, and one nobody approved; neither counts and the report says why.
    rejected = deploy_release(sandbox, "3.0.0", release_artifact=artifact, release_waivers=[
        {"migration": migration, "rule": rules[0], "reason": "approved for the 2024 sale", "approved_by": "ops",
         "expires": "2024-12-31"},
        {"migration": migration, "rule": rules[0], "reason": "it is fine", "expires": "2099-12-31"},
    ])
    assert rejected.rc != 0
    plan = rejected.task("Check for missing migrations and classify the pending ones")[0]["result"]
    gate = plan["gate"]
    assert gate["blocked"] and [w["position"] for w in gate["expired_waivers"]] == [1], gate
    assert gate["invalid_waivers"][0]["problems"] == ["approved_by is missing (who accepted the risk)"], gate
    assert "Expired waivers (not applied)" in plan["report_markdown"]
    assert "Incomplete waivers (not applied)" in plan["report_markdown"]
    assert rejected.task("Stop before any change when the plan is too risky", status="failed")
    assert (applied_migrations(db_env), snapshot_files(sandbox), current_links(sandbox)) == before

    load = LoadGenerator(f"http://127.0.0.1:{sandbox.lb_port}", rate=25, duration=600)
    load.start()
    try:
        waived = deploy_release(sandbox, "3.0.0", release_artifact=artifact, release_waivers=[
            {"migration": migration, "rule": rule, "reason": "index build measured at 2 s on a copy; off-peak",
             "approved_by": "dba on call (CHG-2041)", "expires": "2099-12-31"} for rule in rules])
    finally:
        summary = load.stop()
    assert waived.rc == 0, explain(waived)
    gate = waived.task("Check for missing migrations and classify the pending ones")[0]["result"]["gate"]
    assert not gate["blocked"] and {w["migration"] for w in gate["waived"]} == {migration}, gate
    assert gate["waived"][0]["approved_by"] == "dba on call (CHG-2041)"
    assert applied_migrations(db_env)[-1] == migration
    assert sandbox.served_versions() == {"app1": "3.0.0", "app2": "3.0.0", "app3": "3.0.0"}
    assert summary["failed"] == 0, summary["failures_sample"]


FAILING_MIGRATIONS = {
    "shop/migrations/0009_audit_notes.py": '''from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0008_order_total_index")]
    operations = [
        migrations.RunSQL("CREATE TABLE shop_audit_note (id serial PRIMARY KEY, body text)",
                          "DROP TABLE shop_audit_note"),
    ]
''',
    "shop/migrations/0010_broken.py": '''from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0009_audit_notes")]
    operations = [
        migrations.RunSQL("INSERT INTO shop_audit_note (body) SELECT 'x' FROM generate_series(1, 3)",
                          migrations.RunSQL.noop),
        migrations.RunSQL("SELECT 1 / 0", migrations.RunSQL.noop),
    ]
''',
}


def audit_records(sandbox: Sandbox) -> list[dict]:
    path = sandbox.hosts_dir / "app1" / "shared" / "migrations-audit.log"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_migration_failing_halfway_stops_before_the_rollout_and_says_where_the_database_is(sandbox, db_env):
    """Fleet on 3.0.0 (after the previous test). 3.1.0's 0009 applies, its 0010 fails: the deploy
    stops in the migrate play, no host is switched, and both the failure message and the audit
    log on the migration host say what was applied and which migration failed (rolled back)."""
    artifact = index_artifact(sandbox, "3.1.0", FAILING_MIGRATIONS)
    before_links = current_links(sandbox)
    audited = len(audit_records(sandbox))

    run = deploy_release(sandbox, "3.1.0", release_artifact=str(artifact))
    assert run.rc != 0
    failed = run.task("Apply the pending migrations once", status="failed")
    assert len(failed) == 1, explain(run)
    result = failed[0]["result"]
    assert [m["id"] for m in result["applied"]] == ["shop.0009_audit_notes"]
    assert result["failed_migration"]["id"] == "shop.0010_broken" and result["failed_migration"]["atomic"] is True
    assert "shop.0010_broken failed" in result["msg"] and "Applied before the failure: shop.0009_audit_notes" in (
        result["msg"])
    # the database is where the message says: 0009 applied, 0010 rolled back as a whole
    assert applied_migrations(db_env)[-2:] == ["shop.0008_order_total_index", "shop.0009_audit_notes"]
    with connect(db_env) as conn:
        assert conn.execute("SELECT count(*) FROM shop_audit_note").fetchone()[0] == 0
    # the rollout never started
    assert not run.task("Point current at the new release")
    assert current_links(sandbox) == before_links
    assert sandbox.served_versions() == {"app1": "3.0.0", "app2": "3.0.0", "app3": "3.0.0"}

    records = audit_records(sandbox)
    assert len(records) == audited + 1
    last = records[-1]
    assert last["outcome"] == "failed" and last["context"]["release"] == "3.1.0" and last["phase"] == "pre"
    assert [a["id"] for a in last["applied"]] == ["shop.0009_audit_notes"]
    assert last["target"]["database"] == db_env["PGDATABASE"]
    assert db_env["PGPASSWORD"] not in json.dumps(records)


CONTRACT_MIGRATION = '''from django.db import migrations


class Migration(migrations.Migration):
    safedeploy_phase = "post"
    dependencies = [("shop", "0009_audit_notes")]
    operations = [
        migrations.RunSQL("DROP TABLE shop_audit_note",
                          "CREATE TABLE shop_audit_note (id serial PRIMARY KEY, body text)"),
    ]
'''


def test_post_deploy_migrations_run_after_every_host_serves_the_new_release(sandbox, db_env):
    """3.1.1 replaces the broken 0010 by a contract migration marked safedeploy_phase = "post":
    the migrate play applies nothing new before the rollout, the contract play drops the table
    only after every host serves 3.1.1, after its own snapshot."""
    artifact = index_artifact(sandbox, "3.1.1", {
        "shop/migrations/0009_audit_notes.py": FAILING_MIGRATIONS["shop/migrations/0009_audit_notes.py"],
        "shop/migrations/0010_drop_audit_notes.py": CONTRACT_MIGRATION})

    waiver = {"migration": "shop.0010_drop_audit_notes", "rule": "raw-sql-destructive", "reason": "table unused",
              "approved_by": "e2e", "expires": "2099-12-31"}
    run = deploy_release(sandbox, "3.1.1", release_artifact=str(artifact), release_waivers=[waiver])
    assert run.rc == 0, explain(run)
    plan = run.task("Check for missing migrations and classify the pending ones")[0]["result"]
    assert {m["id"]: m["phase"] for m in plan["plan"]} == {"shop.0010_drop_audit_notes": "post"}
    pre = run.task("Apply the pending migrations once")[0]["result"]
    assert pre["applied"] == [] and pre["post_pending"] == ["shop.0010_drop_audit_notes"], pre
    contract = run.task("Apply the post-deploy migrations once")[0]["result"]
    assert [m["id"] for m in contract["applied"]] == ["shop.0010_drop_audit_notes"]
    assert contract["verification"]["ok"] is True
    # order: every host switched before the contract migration ran
    names = [r["task"] for r in run.results]
    last_switch = max(i for i, name in enumerate(names) if "Point current at the new release" in name)
    assert last_switch < names.index(next(n for n in names if "Apply the post-deploy migrations once" in n))
    assert any(name.startswith("precontract-shop-3.1.1") for name in snapshot_files(sandbox))
    assert sandbox.served_versions() == {"app1": "3.1.1", "app2": "3.1.1", "app3": "3.1.1"}
    with connect(db_env) as conn:
        assert conn.execute("SELECT to_regclass('shop_audit_note')").fetchone()[0] is None
    assert applied_migrations(db_env)[-1] == "shop.0010_drop_audit_notes"
