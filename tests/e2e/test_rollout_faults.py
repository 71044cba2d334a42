"""End to end: faults during the rollout, on the three-host loopback fleet behind nginx, under load.

- A load balancer that cannot be reached, a service manager that is not there: a clear error in
  preflight and nothing changed (no release staged, no migration, no host drained).
- Release 2 broken on host 2 of 3 (its health check fails there): the rollout stops after host 2,
  host 3 still serves release 1, every request through nginx succeeds, the deploy report says which
  host runs which release and gives the rollback command.
- gunicorn cannot start on host 2 of 3: the same, and the rollback command from the message brings
  the fleet back.
- A requirement that cannot be installed: staging fails on every host, the half-built venv and
  release are removed, nothing else changed.
- The order path broken on host 2 of 3 (its warm-up POST fails, health is fine): the same, the host
  never takes a client request; and the warm-ups of the healthy hosts left no row behind.

The module's sandbox takes its ports from 17100-17999, away from the other e2e modules' sandboxes.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from devtools.loadgen import LoadGenerator
from devtools.playbook import PlaybookRun, deploy_release, run_playbook
from devtools.sandbox import HOSTS, Sandbox, _read_env
from tests.e2e.test_deploy_sandbox import applied_migrations, connect, current_links, derived_artifact, explain
from tests.e2e.test_rollback import port_in_range

pytestmark = pytest.mark.slow

BROKEN_HEALTH = '''

def healthz(request):  # noqa: F811 - release broken on this host on purpose by the safedeploy e2e test
    return JsonResponse({"status": "broken on purpose"}, status=503)
'''
BROKEN_WARMUP = '''

def warmup(request):  # noqa: F811 - order path broken on this host on purpose by the safedeploy e2e test
    return JsonResponse({"error": "order path broken on purpose"}, status=500)
'''
BROKEN_BOOT = "\nraise RuntimeError('gunicorn cannot boot this host: broken on purpose by the safedeploy e2e test')\n"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    app_port = port_in_range(17100, 17600, *(address for _name, address in HOSTS))
    box = Sandbox(tmp_path_factory.mktemp("faults-sandbox"), lb_port=port_in_range(17600, 18000, "127.0.0.1"),
                  app_port=app_port)
    box.up(log=lambda *_: None)
    yield box
    box.stop_nginx()
    box.down(purge=True, log=lambda *_: None)


@pytest.fixture(scope="module")
def db_env(sandbox):
    return _read_env(sandbox.db_env_file)


def on(version: str) -> dict[str, str]:
    return {name: version for name, _address in HOSTS}


def fleet_state(sandbox: Sandbox, db_env: dict) -> dict:
    """What a deploy could change: links, staged releases, the upstream file, applied migrations."""
    return {
        "links": current_links(sandbox),
        "releases": {name: sorted(p.name for p in (sandbox.hosts_dir / name / "releases").iterdir())
                     for name, _address in HOSTS},
        "upstream": sandbox.upstream_file.read_text(),
        "migrations": applied_migrations(db_env),
    }


def shared_venvs(sandbox: Sandbox) -> dict[str, list[str]]:
    return {name: sorted(p.name for p in (sandbox.hosts_dir / name / "shared" / "venvs").iterdir())
            for name, _address in HOSTS}


def stage_only(sandbox: Sandbox, version: str, artifact: Path) -> None:
    run = run_playbook(sandbox.inventory_dir / "hosts.ini", "deploy",
                       {"release_version": version, "release_artifact": str(artifact),
                        "release_report_dir": str(sandbox.base / "reports")},
                       tags="preflight,stage", log=sandbox.base / "logs" / f"stage-{version}.log")
    assert run.rc == 0, explain(run)


def break_on_app2(sandbox: Sandbox, version: str, relative: str, text: str) -> tuple[Path, str]:
    """Append ``text`` to a file of the staged ``version`` on app2 only; returns the file and its old text."""
    path = sandbox.hosts_dir / "app2" / "releases" / version / relative
    original = path.read_text()
    path.write_text(original + text)
    return path, original


def deploy_under_load(sandbox: Sandbox, version: str, **extra) -> tuple[PlaybookRun, dict, list[str], dict]:
    """Deploy while 25 req/s go through nginx: the run, the versions served and the drained hosts right
    after it, and the load's summary."""
    load = LoadGenerator(f"http://127.0.0.1:{sandbox.lb_port}", rate=25, duration=600)
    load.start()
    try:
        run = deploy_release(sandbox, version, **extra)
        served = sandbox.served_versions()
        drained = sandbox.drained_hosts()
    finally:
        summary = load.stop()
    return run, served, drained, summary


def failure(run: PlaybookRun) -> dict:
    failed = run.task("Stop the rollout and say where the fleet stands", status="failed")
    assert len(failed) == 1, explain(run)
    return failed[0]


def deploy_report(sandbox: Sandbox, version: str) -> dict:
    return json.loads((sandbox.base / "reports" / f"deploy-{version}.json").read_text())


def test_release_1_everywhere(sandbox, db_env):
    run = deploy_release(sandbox, "1.0.0")
    assert run.rc == 0, explain(run)
    assert sandbox.served_versions() == on("1.0.0")


def test_an_unreachable_load_balancer_stops_in_preflight_and_changes_nothing(sandbox, db_env):
    before = fleet_state(sandbox, db_env)
    run = deploy_release(sandbox, "2.0.0", release_lb_host="lb.unreachable.invalid")
    assert run.rc != 0
    failed = run.task("Fail when the load balancer cannot be reached", status="failed")
    assert {r["host"] for r in failed} == {"app1", "app2", "app3"}, explain(run)
    assert "lb.unreachable.invalid" in failed[0]["result"]["msg"]
    assert "Nothing was changed" in failed[0]["result"]["msg"]
    assert fleet_state(sandbox, db_env) == before


def test_a_load_balancer_that_does_not_serve_stops_in_preflight(sandbox, db_env):
    before = fleet_state(sandbox, db_env)
    sandbox.stop_nginx()
    try:
        run = deploy_release(sandbox, "2.0.0")
    finally:
        sandbox.up(log=lambda *_: None)  # starts nginx again, keeps the rest
    assert run.rc != 0
    failed = run.task("Fail when the load balancer does not answer", status="failed")
    assert failed, explain(run)
    assert f"http://127.0.0.1:{sandbox.lb_port}/healthz" in failed[0]["result"]["msg"]
    assert fleet_state(sandbox, db_env) == before
    assert sandbox.served_versions() == on("1.0.0")


def test_a_missing_service_manager_stops_in_preflight(sandbox, db_env):
    """This machine has no systemd: asking for it is refused before anything changes."""
    before = fleet_state(sandbox, db_env)
    run = deploy_release(sandbox, "2.0.0", release_service_manager="systemd")
    assert run.rc != 0
    failed = run.task("Fail when systemd does not run the host", status="failed")
    assert {r["host"] for r in failed} == {"app1", "app2", "app3"}, explain(run)
    assert "release_service_manager=command" in failed[0]["result"]["msg"]
    assert fleet_state(sandbox, db_env) == before


def test_release_2_unhealthy_on_host_2_stops_the_rollout_there(sandbox, db_env):
    stage_only(sandbox, "2.0.0", sandbox.artifacts / "shop-2.0.0.tar.gz")
    broken, original = break_on_app2(sandbox, "2.0.0", "shop/health.py", BROKEN_HEALTH)
    run, served, drained, summary = deploy_under_load(sandbox, "2.0.0", release_health_deadline=10)
    assert run.rc != 0
    result = failure(run)
    assert result["host"] == "app2"
    msg = result["result"]["msg"]
    assert "Prove the host healthy" in msg and "503" in msg, msg
    assert "app1=2.0.0, app2=2.0.0, app3=1.0.0" in msg
    assert "Out of the load balancer: app2" in msg
    assert "safedeploy.django.rollback -e rollback_report=" in msg
    assert current_links(sandbox) == {"app1": "2.0.0", "app2": "2.0.0", "app3": "1.0.0"}
    assert served["app1"] == "2.0.0" and served["app3"] == "1.0.0"
    assert drained == ["app2"]
    assert not run.task("Point current at the new release", status="ok")[2:], "app3 must not be switched"
    # writes and reads, through nginx, while host 2 failed
    assert summary["failed"] == 0, summary["failures_sample"]
    assert summary["by_endpoint"]["POST /orders/"]["ok"] > 0, summary["by_endpoint"]

    report = deploy_report(sandbox, "2.0.0")
    assert report["status"] == "rollout_failed"
    assert report["hosts"] == {"app1": "2.0.0", "app2": "2.0.0", "app3": "1.0.0"}
    assert report["rollout"]["failed_host"] == "app2"
    assert report["rollout"]["drained"] == ["app2"]
    assert report["previous_releases"] == on("1.0.0")

    # repaired, the same deploy finishes the rollout: app2 rejoins, app3 moves
    broken.write_text(original)
    run = deploy_release(sandbox, "2.0.0")
    assert run.rc == 0, explain(run)
    assert sandbox.served_versions() == on("2.0.0")
    assert sandbox.drained_hosts() == []
    assert deploy_report(sandbox, "2.0.0")["status"] == "complete"


def test_gunicorn_that_cannot_start_on_host_2_stops_the_rollout_and_the_rollback_command_recovers(sandbox, db_env):
    artifact = derived_artifact(sandbox, "2.0.1", {})
    stage_only(sandbox, "2.0.1", artifact)
    break_on_app2(sandbox, "2.0.1", "shopsite/wsgi.py", BROKEN_BOOT)
    migrations = applied_migrations(db_env)
    load = LoadGenerator(f"http://127.0.0.1:{sandbox.lb_port}", rate=25, duration=600)
    load.start()
    try:
        run = deploy_release(sandbox, "2.0.1", release_artifact=str(artifact), release_health_deadline=10)
        served = sandbox.served_versions()
        links = current_links(sandbox)
        rollback_command = failure(run)["result"]["msg"].split("go back with: ", 1)[1].split(" (or deploy", 1)[0]
        words = shlex.split(rollback_command)
        assert words[0] == "ansible-playbook" and "safedeploy.django.rollback" in words, rollback_command
        report_path = Path(re.search(r"rollback_report=(\S+)", rollback_command).group(1))
        assert report_path == sandbox.base / "reports" / "deploy-2.0.1.json"
        assert str(sandbox.inventory_dir / "hosts.ini") in words
        back = run_playbook(sandbox.inventory_dir / "hosts.ini", "rollback", {"rollback_report": str(report_path)},
                            log=sandbox.base / "logs" / "rollback-2.0.1.log")
        served_after_rollback = sandbox.served_versions()
    finally:
        summary = load.stop()
    assert run.rc != 0
    result = failure(run)
    assert result["host"] == "app2", explain(run)
    assert "Restart gunicorn" in result["result"]["msg"], result["result"]["msg"]
    assert "gunicorn cannot boot this host" in result["result"]["msg"], result["result"]["msg"]
    assert links == {"app1": "2.0.1", "app2": "2.0.1", "app3": "2.0.0"}
    assert served["app1"] == "2.0.1" and served["app2"] is None and served["app3"] == "2.0.0"
    assert applied_migrations(db_env) == migrations, "2.0.1 has no migration: nothing applied"
    assert back.rc == 0, explain(back)
    assert served_after_rollback == on("2.0.0")
    assert sandbox.drained_hosts() == []
    assert summary["failed"] == 0, summary["failures_sample"]


def test_a_warm_up_that_fails_on_host_2_keeps_it_out_of_the_load_balancer(sandbox, db_env):
    artifact = derived_artifact(sandbox, "2.0.2", {})
    stage_only(sandbox, "2.0.2", artifact)
    break_on_app2(sandbox, "2.0.2", "shop/warmup.py", BROKEN_WARMUP)
    run, served, drained, summary = deploy_under_load(sandbox, "2.0.2", release_artifact=str(artifact),
                                                      release_health_deadline=5)
    assert run.rc != 0
    result = failure(run)
    assert result["host"] == "app2", explain(run)
    msg = result["result"]["msg"]
    assert "Warm up the restarted host" in msg and "/warmup" in msg and "status was 500" in msg, msg
    assert "app1=2.0.2, app2=2.0.2, app3=2.0.0" in msg
    warmed = run.task("Warm up the restarted host before it takes traffic", status="ok")
    assert [r["host"] for r in warmed] == ["app1"], explain(run)
    # app2 answers its health check on 2.0.2, but never got a client: it stayed out of nginx
    assert served == {"app1": "2.0.2", "app2": "2.0.2", "app3": "2.0.0"}
    assert drained == ["app2"]
    assert summary["failed"] == 0, summary["failures_sample"]
    app2 = dict(HOSTS)["app2"]
    served_by_app2 = [line for line in (sandbox.nginx_dir / "logs" / "access.log").read_text().splitlines()
                      if f"upstream={app2}:" in line and "release=2.0.2" in line]
    assert served_by_app2 == []
    # every deploy of this module warmed its hosts up with orders of warmup@example.com: all rolled back
    with connect(db_env) as conn:
        kept = conn.execute("SELECT count(*) FROM shop_customer WHERE email = 'warmup@example.com'").fetchone()[0]
    assert kept == 0


def test_a_requirement_that_cannot_be_installed_fails_staging_and_leaves_nothing_half_built(sandbox, db_env):
    before = fleet_state(sandbox, db_env)
    venvs = shared_venvs(sandbox)
    artifact = derived_artifact(sandbox, "2.0.3", {"requirements.txt": lambda data: data + b"no-such-package==1.0\n"})
    run = deploy_release(sandbox, "2.0.3", release_artifact=str(artifact))
    assert run.rc != 0
    failed = run.task("Report the staging failure", status="failed")
    assert {r["host"] for r in failed} == {"app1", "app2", "app3"}, explain(run)
    msg = failed[0]["result"]["msg"]
    assert "Build the release's virtualenv" in msg and "no-such-package" in msg, msg
    assert "The half-made release was removed" in msg
    assert fleet_state(sandbox, db_env) == before
    # the new requirements got a venv of their own, removed with the failed build
    assert shared_venvs(sandbox) == venvs
