"""``make demo``: deploy release 1, then release 2 under load, on the sandbox fleet.

Builds (or reuses) the sandbox, deploys 1.0.0 when no host serves anything yet,
then deploys 2.0.0 with ``playbooks/deploy.yml`` while a bounded load loop sends
requests through nginx, and prints what happened: the plan, the snapshot, the
migrations applied, each host's health and the failed-request count.

Re-running it redeploys 2.0.0 on a fleet that already runs it: the play recap
then shows changed=0 on every host.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from devtools.loadgen import LoadGenerator
from devtools.playbook import PlaybookRun, deploy_release
from devtools.sandbox import DEFAULT_DIR, Sandbox

FIRST, SECOND = "1.0.0", "2.0.0"


def deploy(sandbox: Sandbox, version: str) -> PlaybookRun:
    print(f"\n=== ansible-playbook playbooks/deploy.yml -e release_version={version}  (log: .sandbox/logs)\n")
    run = deploy_release(sandbox, version, echo=True)
    if run.rc != 0:
        raise SystemExit(f"deploy of {version} failed (rc={run.rc}); see {run.log}")
    return run


def print_summary(sandbox: Sandbox, run, load: dict, seconds: float) -> None:
    report = json.loads((sandbox.base / "reports" / f"deploy-{SECOND}.json").read_text())
    print("\n" + "=" * 72)
    print(f"safedeploy demo: release {SECOND} — finished in {seconds:.0f}s")
    print("=" * 72)
    target = report["target"]
    print(f"target      : database {target.get('database')} on {target.get('host')}:{target.get('port')} "
          f"as {target.get('user')} (PostgreSQL {target.get('server_version')}, primary)")
    plan = report["plan"]
    print(f"plan        : {len(plan['pending'])} pending, highest risk {plan['highest_risk']}, "
          f"gate {'BLOCKED' if plan['blocked'] else 'passed'}")
    for migration, risk in plan["risks"].items():
        print(f"              {risk:<7} {migration}")
    snapshot = report.get("snapshot") or {}
    if snapshot:
        print(f"snapshot    : {snapshot.get('path')} ({snapshot.get('size')} bytes, sha256 "
              f"{str(snapshot.get('sha256'))[:16]}…)")
    else:
        print("snapshot    : none needed (nothing pending)")
    applied = report["migrations_applied"]
    print(f"migrations  : {len(applied)} applied once, on {migrate_host(run) or 'no host'}")
    for item in applied:
        print(f"              {item['id']}  {item['seconds']:.2f}s")
    versions = sandbox.served_versions()
    for name, version in versions.items():
        print(f"host {name:<7}: serves {version or 'NOTHING'} ({report['hosts'].get(name)})")
    changed = ", ".join(f"{host}={counts['changed']}" for host, counts in sorted(run.recap.items()))
    print(f"changed     : {changed}")
    print(f"requests    : {load['total']} through nginx at {load['rate_achieved']}/s, "
          f"p99 {load['latency_ms']['p99']} ms, versions seen {load['versions']}")
    print(f"FAILED REQUESTS: {load['failed']}")


def migrate_host(run) -> str | None:
    applied = [r for r in run.task("Apply the pending migrations") if r["status"] == "ok"]
    return applied[0]["delegated_to"] or applied[0]["host"] if applied else None


def main() -> int:
    started = time.monotonic()
    sandbox = Sandbox(DEFAULT_DIR)
    sandbox.up()
    if not any(sandbox.served_versions().values()):
        deploy(sandbox, FIRST)
    load = LoadGenerator(f"http://127.0.0.1:{sandbox.lb_port}", rate=30, duration=900)
    load.start()
    try:
        run = deploy(sandbox, SECOND)
        time.sleep(2)  # requests still in flight when the last host came back
    finally:
        summary = load.stop()
    (sandbox.base / "logs" / "load.json").write_text(json.dumps(summary, indent=2))
    print_summary(sandbox, run, summary, time.monotonic() - started)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
