"""Run the collection's playbooks against a sandbox and collect what happened.

Shared by ``make demo`` (devtools.demo) and the end-to-end tests: runs
``ansible-playbook`` with the repository as the installed collection, keeps the
whole output in a log file, and returns the per-task results (JSON lines from
devtools/callbacks/results_jsonl.py) and the PLAY RECAP counts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / ".build" / "collections"
RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                   r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)")


@dataclass
class PlaybookRun:
    rc: int
    output: str
    results: list[dict] = field(default_factory=list)
    recap: dict[str, dict[str, int]] = field(default_factory=dict)
    log: Path | None = None

    def task(self, name_part: str, status: str | None = None) -> list[dict]:
        """Results of tasks whose name contains ``name_part`` (optionally with that status)."""
        return [r for r in self.results if name_part in r["task"] and (status is None or r["status"] == status)]

    @property
    def changed(self) -> int:
        return sum(counts["changed"] for counts in self.recap.values())


def link_collection() -> None:
    link = COLLECTIONS / "ansible_collections" / "safedeploy" / "django"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO)


def run_playbook(inventory: Path, playbook: str, extra_vars: dict | None = None, *, check: bool = False,
                 log: Path | None = None, echo: bool = False, tags: str | None = None,
                 verbosity: int = 0) -> PlaybookRun:
    """Run playbooks/<playbook>.yml (or ``playbook`` itself when it is a path to a file);
    ``echo`` streams the output to our stdout as it comes."""
    link_collection()
    bindir = Path(sys.executable).parent
    path = Path(playbook) if playbook.endswith(".yml") else REPO / "playbooks" / f"{playbook}.yml"
    argv = [str(bindir / "ansible-playbook"), "-i", str(inventory), str(path)]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    if check:
        argv.append("--check")
    if tags:
        argv += ["--tags", tags]
    if verbosity:
        argv.append("-" + "v" * verbosity)
    with tempfile.NamedTemporaryFile(prefix="safedeploy-results-", suffix=".jsonl", delete=False) as handle:
        results_path = Path(handle.name)
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_CALLBACK_PLUGINS=str(REPO / "devtools" / "callbacks"),
        ANSIBLE_CALLBACKS_ENABLED="results_jsonl",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        SAFEDEPLOY_RESULTS=str(results_path),
        PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
    )
    try:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        rc = proc.wait()
        results = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    finally:
        results_path.unlink(missing_ok=True)
    output = "".join(lines)
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(output)
    recap = {}
    for line in output.splitlines():
        match = RECAP.match(line.strip())
        if match:
            recap[match["host"]] = {k: int(v) for k, v in match.groupdict().items() if k != "host"}
    return PlaybookRun(rc=rc, output=output, results=results, recap=recap, log=log)


def deploy_release(sandbox, version: str, *, check: bool = False, verbosity: int = 0, echo: bool = False,
                   **extra_vars) -> PlaybookRun:
    """playbooks/deploy.yml of ``version`` on a devtools.sandbox.Sandbox, logged under its logs/."""
    extra_vars = {
        "release_version": version,
        "release_artifact": str(sandbox.artifacts / f"shop-{version}.tar.gz"),
        "release_report_dir": str(sandbox.base / "reports"),
        **extra_vars,
    }
    return run_playbook(sandbox.inventory_dir / "hosts.ini", "deploy", extra_vars, check=check, echo=echo,
                        verbosity=verbosity, log=sandbox.base / "logs" / f"deploy-{version}.log")
