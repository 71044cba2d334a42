"""Accuracy of the migration planner (and of django-migration-linter) on the labelled corpus.

    .venv/bin/python benchmarks/accuracy/run.py [--no-linter] [--keep]

Starts a throwaway PostgreSQL (devtools/pgcluster.py), builds the corpus project
(tests/corpus/corpus.py: one app per case on shared, really sized tables), runs our
planner once over every case (``_django_helper`` action "plan" + ``_rules.assess_plan``,
what ``django_migration_plan`` does), then django-migration-linter on the same project
from its own cached venv in .build/bench/accuracy/venv. Prints the figures and writes
.build/bench/accuracy/results.json.

How the linter's answers are mapped onto our levels (it has no risk levels of its own):
a migration it reports as ERR -> high, WARNING -> medium, OK -> low, and a
migration it does not lint at all ("IGNORE") -> none.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from devtools.pgcluster import Cluster  # noqa: E402
from tests.corpus import corpus  # noqa: E402

OUT = REPO / ".build" / "bench" / "accuracy"
LINTER_VENV = OUT / "venv"
LINTER_REQUIREMENTS = ["django==5.2.*", "psycopg[binary]", "django-migration-linter"]


def linter_python() -> str:
    python = LINTER_VENV / "bin" / "python"
    marker = LINTER_VENV / ".installed"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LINTER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *LINTER_REQUIREMENTS], check=True)
        marker.write_text(" ".join(LINTER_REQUIREMENTS))
    return str(python)


_LINE = re.compile(r"^\((c_\w+), 0002_case\)\.*\s*(OK|ERR|WARNING|IGNORE)", re.M)


def run_linter(project: Path, env: dict, cases: list[dict]) -> tuple[dict, str, list[str]]:
    """Lint every case's 0002 migration; returns ({case: {"risk"}}, output, cases it crashed on).

    The linter stops at the first migration its ``sqlmigrate`` call raises on (e.g.
    AddIndexConcurrently in an atomic migration); that case is recorded as a crash and the
    run goes on with the remaining apps.
    """
    python = linter_python()
    mapping = {"ERR": "high", "WARNING": "medium", "OK": "low", "IGNORE": "none"}
    graded: dict[str, dict] = {}
    crashed: list[str] = []
    outputs = []
    remaining = sorted(c["app"] for c in cases)
    while remaining:
        proc = subprocess.run(
            [python, "manage.py", "lintmigrations", "--no-cache", "--sql-analyser", "postgresql",
             "--include-apps", *remaining],
            cwd=project, env=corpus.child_env(env, CORPUS_LINTER="1"), capture_output=True, text=True,
            timeout=900, check=False,
        )
        output = proc.stdout + proc.stderr
        outputs.append(output)
        for app, status in _LINE.findall(output):
            if app in remaining:  # apps left out of --include-apps are listed too, as IGNORE
                graded[app[2:]] = {"risk": mapping[status]}
        done = {"c_" + case for case in graded} | {"c_" + case for case in crashed}
        remaining = [app for app in remaining if app not in done]
        if proc.returncode == 0 or not remaining:
            break
        if "Traceback" not in output:
            break  # it found errors and exited 1: every migration was linted
        started = re.findall(r"^\((c_\w+), 0001_base\)", output, re.M)
        culprit = started[-1] if started and started[-1] in remaining else remaining[0]
        crashed.append(culprit[2:])
        graded[culprit[2:]] = {"risk": "high", "crashed": True}
        remaining.remove(culprit)
    return graded, "\n".join(outputs), crashed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-linter", action="store_true", help="skip django-migration-linter")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL cluster and project")
    args = parser.parse_args(argv)

    OUT.mkdir(parents=True, exist_ok=True)
    cases = corpus.load_cases()
    cluster = Cluster(OUT / "pg").ensure_started()
    results: dict = {"corpus": len(cases)}
    try:
        password = os.urandom(8).hex()
        cluster.create_role("corpus", password, createdb=True)
        cluster.drop_database("corpus")
        cluster.create_database("corpus", owner="corpus")
        env = cluster.env("corpus", password, "corpus")
        project = corpus.build_project(OUT / "project", cases)
        started = time.monotonic()
        corpus.prepare_database(project, env, cases=cases)
        results["prepare_seconds"] = round(time.monotonic() - started, 2)

        started = time.monotonic()
        ours = corpus.plan(project, env)
        results["planner_seconds"] = round(time.monotonic() - started, 2)
        results["ours"] = corpus.score(cases, ours)
        results["ours_graded"] = ours
        print(corpus.format_score(f"safedeploy.django planner ({results['planner_seconds']}s)", results["ours"]))

        if not args.no_linter:
            started = time.monotonic()
            linted, output, crashed = run_linter(project, env, cases)
            results["linter_seconds"] = round(time.monotonic() - started, 2)
            results["linter"] = corpus.score(cases, linted)
            results["linter_graded"] = linted
            results["linter_mapping"] = (
                "ERR -> high, WARNING -> medium, OK -> low, IGNORE -> none; a crash (the lint run fails) -> high"
            )
            results["linter_crashed_on"] = crashed
            (OUT / "linter-output.txt").write_text(output)
            print()
            print(corpus.format_score(
                f"django-migration-linter ({results['linter_seconds']}s; ERR->high, WARNING->medium, OK->low, "
                f"crash->high; crashed on {len(crashed)}: {', '.join(crashed) or '-'})",
                results["linter"],
            ))
    finally:
        if not args.keep:
            cluster.destroy()
    (OUT / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    print(f"\nresults: {OUT / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
