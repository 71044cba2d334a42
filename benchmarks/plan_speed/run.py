"""plan_speed: how fast django_migration_plan plans ~200 real migrations, against Django's own commands.

One command (from the repository root)::

    .venv/bin/python benchmarks/plan_speed/run.py [--rounds 5] [--no-ansible]

It builds (once, cached) a venv under .build/bench/plan_speed/venv with Django 5.2,
wagtail, django-allauth and psycopg from PyPI; starts its own PostgreSQL
(devtools/pgcluster.py); and measures, alternating and repeated, in two scenarios:

(a) empty database, everything pending: the full plan with SQL and verdicts;
(b) the everyday deploy: all but the last three migrations of the plan applied.

Baselines: ``manage.py showmigrations`` and ``manage.py migrate --plan``. Ours: the
planner's helper (plugins/module_utils/_django_helper.py) run the way the module
runs it — the application's interpreter, cwd = project, the same JSON request on
stdin — plus the whole module through ``ansible`` once per scenario for reference.
Medians go to a table and to .build/bench/plan_speed/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROJECT = HERE / "project"
BUILD = REPO / ".build" / "bench" / "plan_speed"
VENV = BUILD / "venv"
VENV_PYTHON = VENV / "bin" / "python"
RESULTS = BUILD / "results.json"
HELPER = REPO / "plugins" / "module_utils" / "_django_helper.py"
SETTINGS = "benchproj.settings"
REQUIREMENTS = [
    "Django>=5.2,<5.3",
    "wagtail>=7.0,<8",  # 7.x supports Django 5.2
    "django-allauth>=65,<66",
    "psycopg[binary]>=3.2,<4",
]
TAIL_PENDING = 3  # scenario (b): this many migrations left to apply

# Goals from issue 4.
GOAL_A = 2.0  # ours / showmigrations, empty database
LIMIT_A = 4.0  # not acceptable above this
GOAL_B = 1.5  # ours / migrate --plan, the everyday deploy

sys.path.insert(0, str(REPO))
from devtools.pgcluster import Cluster  # noqa: E402


def log(message: str) -> None:
    print(message, flush=True)


# -- the benchmark venv ------------------------------------------------------------


def ensure_venv() -> dict:
    marker = VENV / ".requirements.json"
    wanted = json.dumps(REQUIREMENTS)
    if not (VENV_PYTHON.exists() and marker.exists() and marker.read_text() == wanted):
        log(f"building the benchmark venv in {VENV} (once) ...")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        proc = subprocess.run(
            [str(VENV_PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode:
            sys.exit(f"pip install failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        marker.write_text(wanted)
    out = subprocess.run(
        [
            str(VENV_PYTHON),
            "-c",
            "import json, importlib.metadata as m; "
            "print(json.dumps({n: m.version(n) for n in ('Django', 'wagtail', 'django-allauth', 'psycopg')}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    versions = json.loads(out)
    versions["python"] = subprocess.run(
        [str(VENV_PYTHON), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return versions


# -- running things -------------------------------------------------------------------


def app_env(db_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DJANGO_", "PYTHON"))}
    env.update(db_env)
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def manage(db_env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(VENV_PYTHON), "manage.py", *args],
        cwd=PROJECT,
        env=app_env(db_env),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if check and proc.returncode:
        sys.exit(f"manage.py {' '.join(args)} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def helper_request() -> dict:
    # What _django_runner.invoke_helper sends for django_migration_plan:
    # dict(payload, action=..., database=..., settings=...) with payload {"check_missing": ...}.
    return {"check_missing": True, "action": "plan", "database": "default", "settings": SETTINGS}


def run_helper(db_env: dict, extra_env: dict | None = None) -> dict:
    env = app_env(db_env)
    env.update(extra_env or {})
    proc = subprocess.run(
        [str(VENV_PYTHON), str(HELPER)],
        cwd=PROJECT,
        env=env,
        input=json.dumps(helper_request()),
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        sys.exit(f"the helper did not answer (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    if not reply.get("ok"):
        sys.exit(f"the helper failed: {json.dumps(reply)[:3000]}")
    return reply


def run_module(db_env: dict) -> tuple[float, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DJANGO_"))}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
        ANSIBLE_LOCALHOST_WARNING="False",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
        ANSIBLE_NOCOLOR="1",
    )
    args = {
        "project_path": str(PROJECT),
        "python": str(VENV_PYTHON),
        "settings": SETTINGS,
        "app_environment": db_env,
        "max_risk": "high",
        "fail_on_block": False,
        "fail_on_missing": False,
    }
    argv = [
        str(Path(sys.executable).parent / "ansible"),
        "localhost",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-m",
        "safedeploy.django.django_migration_plan",
        "-a",
        json.dumps(args),
    ]
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=900)
    seconds = time.perf_counter() - started
    status = "?"
    summary: dict = {"rc": proc.returncode}
    marker = proc.stdout.find("localhost | ")
    if marker >= 0:
        status = proc.stdout[marker + len("localhost | ") :].split(" ", 1)[0]
        try:
            brace = proc.stdout.index("{", marker)
            result, _end = json.JSONDecoder().raw_decode(proc.stdout[brace:])
            summary.update(
                pending=len(result.get("plan") or []),
                highest_risk=result.get("highest_risk"),
                msg=(result.get("msg") or "")[:300] or None,
            )
        except ValueError:
            pass
    summary["status"] = status
    if status != "SUCCESS":
        summary["output_tail"] = (proc.stdout + proc.stderr)[-1500:]
    return seconds, summary


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def plan_ids(stdout: str) -> list[str]:
    """Migration ids printed by ``migrate --plan`` (unindented lines after the header)."""
    lines = stdout.splitlines()
    return [line.strip() for line in lines[1:] if line and not line.startswith(" ")]


# -- preparing the two databases --------------------------------------------------------

MIGRATE_PREFIX = r"""
import json, sys
import django
django.setup()
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

executor = MigrationExecutor(connection)
plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
keep = int(sys.argv[1])
prefix = plan[: len(plan) - keep]
targets = {}
for migration, _backwards in prefix:
    targets[migration.app_label] = (migration.app_label, migration.name)
executor.migrate(list(targets.values()))
print(json.dumps({"total": len(plan), "applied": len(prefix),
                  "left": [f"{m.app_label}.{m.name}" for m, _ in plan[len(plan) - keep:]]}))
"""


def prepare_deploy_db(db_env: dict) -> dict:
    proc = subprocess.run(
        [str(VENV_PYTHON), "-c", MIGRATE_PREFIX, str(TAIL_PENDING)],
        cwd=PROJECT,
        env=app_env(db_env),
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if proc.returncode:
        sys.exit(f"migrating the scenario (b) database failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- main ---------------------------------------------------------------------------------


def _ratios(ours: list[float], baseline: list[float]) -> list[float]:
    return [o / b for o, b in zip(ours, baseline, strict=True)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plan_speed benchmark (issue 4)")
    parser.add_argument("--rounds", type=int, default=5, help="measurement rounds per scenario (default 5)")
    parser.add_argument("--no-ansible", action="store_true", help="skip the reference run of the whole module")
    parser.add_argument("--keep-cluster", action="store_true", help="leave PostgreSQL running (for profiling)")
    args = parser.parse_args(argv)

    total_started = time.perf_counter()
    versions = ensure_venv()
    log("bench venv: " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    cluster = Cluster(BUILD / "pg").ensure_started()
    try:
        password = os.urandom(9).hex()
        cluster.create_role("bench", password, createdb=True)
        dbs = {"a": "plan_empty", "b": "plan_deploy"}
        for name in dbs.values():
            cluster.drop_database(name)
            cluster.create_database(name, owner="bench")
        envs = {key: cluster.env("bench", password, name) for key, name in dbs.items()}
        server_version = cluster.psql("SHOW server_version")

        # Exact size of the benchmark: the plan on the empty database.
        reply = run_helper(envs["a"])
        full_plan = [m["id"] for m in reply["plan"]]
        operations = sum(len(m["operations"]) for m in reply["plan"])
        statements = sum(len(op["sql"]) for m in reply["plan"] for op in m["operations"])
        sql_errors = [
            f"{m['id']}#{op['index']} {op['type']}: {op['sql_error']}"
            for m in reply["plan"]
            for op in m["operations"]
            if op.get("sql_error")
        ]
        django_plan = plan_ids(manage(envs["a"], "migrate", "--plan").stdout)
        same_order_a = full_plan == django_plan
        log(
            f"benchmark project: {len(full_plan)} migrations pending on an empty database "
            f"({operations} operations, {statements} SQL statements, {len(sql_errors)} operations whose SQL "
            f"needs the live schema, reported as sql_error); plan identical to migrate --plan: {same_order_a}"
        )
        for line in sql_errors:
            log(f"  sql_error: {line}")

        log(f"migrating the scenario (b) database to all but the last {TAIL_PENDING} migrations ...")
        prepared = prepare_deploy_db(envs["b"])
        reply_b = run_helper(envs["b"])
        pending_b = [m["id"] for m in reply_b["plan"]]
        same_order_b = pending_b == plan_ids(manage(envs["b"], "migrate", "--plan").stdout)
        log(
            f"  applied {prepared['applied']} of {prepared['total']}; pending now: {', '.join(pending_b)}; "
            f"identical to migrate --plan: {same_order_b}"
        )
        if len(pending_b) != TAIL_PENDING:
            sys.exit(f"scenario (b) should leave {TAIL_PENDING} pending, the helper sees {len(pending_b)}")

        commands = {
            "showmigrations": lambda env: manage(env, "showmigrations"),
            "migrate --plan": lambda env: manage(env, "migrate", "--plan"),
            "ours (helper)": run_helper,
        }
        times: dict = {s: {name: [] for name in commands} for s in dbs}
        walk: dict = {s: [] for s in dbs}
        names = list(commands)
        log(f"measuring {args.rounds} rounds, alternating commands and scenarios ...")
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]  # rotate who goes first
            for scenario in ("a", "b") if rnd % 2 == 0 else ("b", "a"):
                for name in order:
                    seconds, value = timed(lambda name=name, scenario=scenario: commands[name](envs[scenario]))
                    times[scenario][name].append(seconds)
                    if name == "ours (helper)":
                        walk[scenario].append(value["timings"]["walk_seconds"])
            log(
                f"  round {rnd + 1}: "
                + "; ".join(f"({s}) " + ", ".join(f"{n} {times[s][n][-1]:.2f}s" for n in names) for s in ("a", "b"))
            )

        module_runs = {}
        if not args.no_ansible:
            for scenario in ("a", "b"):
                seconds, summary = run_module(envs[scenario])
                module_runs[scenario] = dict(summary, seconds=round(seconds, 3))
    finally:
        if not args.keep_cluster:
            cluster.destroy()

    results: dict = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "versions": dict(versions, postgresql=server_version),
        "migrations_in_plan": len(full_plan),
        "operations_in_plan": operations,
        "sql_statements": statements,
        "sql_errors": sql_errors,
        "plan_identical_to_migrate_plan": {"a": same_order_a, "b": same_order_b},
        "rounds": args.rounds,
        "scenarios": {},
        "module_reference": module_runs,
    }
    goals = {
        "a": ("showmigrations", GOAL_A, LIMIT_A, "empty database, everything pending"),
        "b": ("migrate --plan", GOAL_B, None, f"all but the last {TAIL_PENDING} applied"),
    }
    log("")
    log(
        f"plan_speed — {len(full_plan)} migrations, {args.rounds} rounds, medians "
        f"(Django {versions['Django']}, wagtail {versions['wagtail']}, allauth {versions['django-allauth']}, "
        f"PostgreSQL {server_version})"
    )
    header = (
        f"{'scenario':<52} {'showmigrations':>15} {'migrate --plan':>15} {'ours':>8} {'ours/show':>10} "
        f"{'ours/plan':>10}  goal"
    )
    log(header)
    log("-" * len(header))
    all_met = True
    for scenario, (baseline, goal, limit, label) in goals.items():
        med = {name: median(values) for name, values in times[scenario].items()}
        ours = med["ours (helper)"]
        ratio_show = ours / med["showmigrations"]
        ratio_plan = ours / med["migrate --plan"]
        ratio = ratio_show if baseline == "showmigrations" else ratio_plan
        met = ratio <= goal
        acceptable = limit is None or ratio <= limit
        all_met &= met
        verdict = f"ours/{baseline} <= {goal}x: {'MET' if met else 'NOT MET'}"
        if limit is not None:
            verdict += f" (not acceptable above {limit}x: {'ok' if acceptable else 'FAILED'})"
        pending = len(full_plan) if scenario == "a" else TAIL_PENDING
        log(
            f"({scenario}) {label + f' [{pending} pending]':<48} {med['showmigrations']:>14.2f}s "
            f"{med['migrate --plan']:>14.2f}s {ours:>7.2f}s {ratio_show:>9.2f}x {ratio_plan:>9.2f}x  {verdict}"
        )
        results["scenarios"][scenario] = {
            "label": label,
            "pending": pending,
            "seconds": {name: [round(v, 3) for v in values] for name, values in times[scenario].items()},
            "median_seconds": {name: round(v, 3) for name, v in med.items()},
            "helper_walk_seconds_median": round(median(walk[scenario]), 3),
            "ratio_ours_showmigrations": round(ratio_show, 3),
            "ratio_ours_migrate_plan": round(ratio_plan, 3),
            # Each round runs the three commands back to back: the median of the per-round
            # ratios is less sensitive to the load of a shared machine drifting between rounds.
            "paired_ratio_median": {
                base: round(median(_ratios(times[scenario]["ours (helper)"], times[scenario][base])), 3)
                for base in ("showmigrations", "migrate --plan")
            },
            "goal": {
                "baseline": baseline,
                "max_ratio": goal,
                "not_acceptable_above": limit,
                "met": met,
                "acceptable": acceptable,
            },
        }
    for scenario in goals:
        paired = results["scenarios"][scenario]["paired_ratio_median"]
        log(
            f"({scenario}) median of the per-round ratios: ours/showmigrations {paired['showmigrations']:.2f}x, "
            f"ours/migrate --plan {paired['migrate --plan']:.2f}x"
        )
    for scenario, run in module_runs.items():
        log(
            f"reference, whole module through ansible ({scenario}): {run['seconds']:.2f}s, status {run['status']}, "
            f"{run.get('pending', '?')} pending, highest risk {run.get('highest_risk')}"
        )
        if run.get("output_tail"):
            log(run["output_tail"])
    log(
        f"(ours = helper process; of which the planning walk: median "
        f"{results['scenarios']['a']['helper_walk_seconds_median']:.2f}s (a), "
        f"{results['scenarios']['b']['helper_walk_seconds_median']:.2f}s (b))"
    )
    results["all_goals_met"] = all_met
    results["total_seconds"] = round(time.perf_counter() - total_started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    log(f"figures written to {RESULTS.relative_to(REPO)}; benchmark took {results['total_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
