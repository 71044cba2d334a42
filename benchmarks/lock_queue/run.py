"""lock_queue: what the application feels while a migration queues behind a long transaction.

One command (from the repository root)::

    .venv/bin/python benchmarks/lock_queue/run.py [--hold 8] [--lock-timeout 1s] [--retries 10]
                                                   [--retry-delay 0.5] [--rounds 1] [--keep]

It starts its own PostgreSQL (devtools/pgcluster.py), writes a tiny Django project in a
temporary directory (app ``benchapp``: 0001 creates ``bench_item``, 0002 adds a nullable
column, i.e. ``ALTER TABLE bench_item ADD COLUMN ...``, which needs ACCESS EXCLUSIVE) and,
per scenario, on a freshly created database with 0001 applied and 100k rows in the table:

- an "application" thread (its own autocommit connection) runs small queries on the table
  without pause (``SELECT id ... WHERE id = %s`` on random ids, and an ``UPDATE`` of one row
  every few queries) and records each query's latency;
- a long transaction (``BEGIN; SELECT count(*) FROM bench_item;``) holds ACCESS SHARE for
  ``--hold`` seconds, then commits;
- right after it began, the migration is started:

  (a) plain ``manage.py migrate``: its ALTER TABLE queues behind the long transaction, and
      every application query queues behind the ALTER until the transaction ends;
  (b) ``safedeploy.django.django_migrate_once`` through ``ansible localhost`` with
      ``lock_timeout`` (default 1s), ``retries`` and ``retry_delay``: the ALTER gives up after
      lock_timeout, releasing the queries queued behind it, and is tried again.

A monitor connection polls pg_locks for the ALTER's ungranted ACCESS EXCLUSIVE request, so the
run also shows how often and how long the migration waited. Printed per scenario: the worst
and p99 application query latency, the number of application queries, the migration's wall
time and, for (b), the retries used; then worst(a)/worst(b) and the goal: the worst
application latency in (b) <= lock_timeout x 1.2. Exit status 1 when the goal is not met,
2 when a run is invalid (a migration failed, or the ALTER never had to wait).
Figures also go to .build/bench/lock_queue/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / ".build" / "bench" / "lock_queue"
RESULTS = BUILD / "results.json"
COLLECTIONS = REPO / ".build" / "collections"
PYTHON = sys.executable  # the application's interpreter: the repository venv has Django and psycopg
ANSIBLE = str(Path(sys.executable).parent / "ansible")
MODULE = "safedeploy.django.django_migrate_once"
SETTINGS = "lockq_settings"
DATABASE = "lockq"
ROWS = 100_000
UPDATE_EVERY = 5  # the application updates one row every this many queries
WARMUP = 1.0  # seconds of application traffic before the long transaction begins
MIGRATION_DELAY = 0.2  # seconds between the long transaction's SELECT and the migration's start
TAIL = 1.0  # seconds of application traffic after everything ended
GOAL_FACTOR = 1.2  # goal: worst app latency in (b) <= lock_timeout * GOAL_FACTOR

sys.path.insert(0, str(REPO))
from devtools.pgcluster import Cluster  # noqa: E402


def log(message: str = "") -> None:
    print(message, flush=True)


# -- the Django project -----------------------------------------------------------------

SETTINGS_PY = """\
import os
SECRET_KEY = "lock-queue-bench"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["benchapp"]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": os.environ["PGHOST"], "PORT": os.environ["PGPORT"], "USER": os.environ["PGUSER"],
    "PASSWORD": os.environ["PGPASSWORD"], "NAME": os.environ["PGDATABASE"],
}}
"""

MANAGE_PY = f"""\
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "{SETTINGS}")
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
"""

MODELS_PY = """\
from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=100)
    qty = models.IntegerField(default=0)
    note = models.TextField(null=True)

    class Meta:
        db_table = "bench_item"
"""

MIGRATION_0001 = """\
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Item",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=100)),
                ("qty", models.IntegerField(default=0)),
            ],
            options={"db_table": "bench_item"},
        ),
    ]
"""

MIGRATION_0002 = """\
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("benchapp", "0001_initial")]
    operations = [
        migrations.AddField(model_name="item", name="note", field=models.TextField(null=True)),
    ]
"""


def build_project(dest: Path) -> Path:
    app = dest / "benchapp"
    (app / "migrations").mkdir(parents=True)
    (dest / "manage.py").write_text(MANAGE_PY)
    (dest / f"{SETTINGS}.py").write_text(SETTINGS_PY)
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text(MODELS_PY)
    (app / "migrations" / "__init__.py").write_text("")
    (app / "migrations" / "0001_initial.py").write_text(MIGRATION_0001)
    (app / "migrations" / "0002_item_note.py").write_text(MIGRATION_0002)
    return dest


def app_env(db_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DJANGO_", "PYTHON"))}
    env.update(db_env, DJANGO_SETTINGS_MODULE=SETTINGS, PYTHONIOENCODING="utf-8")
    return env


def ansible_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DJANGO_"))}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_LOCALHOST_WARNING="False",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
        ANSIBLE_DEPRECATION_WARNINGS="False",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    return env


def connect(db_env: dict, *, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(
        host=db_env["PGHOST"],
        port=db_env["PGPORT"],
        user=db_env["PGUSER"],
        password=db_env["PGPASSWORD"],
        dbname=db_env["PGDATABASE"],
        autocommit=autocommit,
        application_name="lock_queue bench",
    )


def manage(project: Path, db_env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=project,
        env=app_env(db_env),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if proc.returncode:
        sys.exit(f"manage.py {' '.join(args)} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def reset_database(cluster: Cluster, project: Path, db_env: dict) -> None:
    """A fresh database: 0001 applied, ROWS rows in bench_item, analyzed; 0002 pending."""
    cluster.drop_database(DATABASE)
    cluster.create_database(DATABASE, owner=db_env["PGUSER"])
    manage(project, db_env, "migrate", "benchapp", "0001", "--no-input", "-v", "0")
    with connect(db_env) as conn:
        conn.execute("INSERT INTO bench_item (name, qty) SELECT 'item ' || g, g FROM generate_series(1, %s) g", [ROWS])
        conn.execute("VACUUM ANALYZE bench_item")


def column_added(db_env: dict) -> bool:
    with connect(db_env) as conn:
        return bool(
            conn.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_name = 'bench_item' AND column_name = 'note'"
            ).fetchone()
        )


# -- the actors -------------------------------------------------------------------------


class App(threading.Thread):
    """The application: small queries on bench_item, back to back, each one timed."""

    def __init__(self, db_env: dict, clock0: float):
        super().__init__(name="app", daemon=True)
        self.db_env = db_env
        self.clock0 = clock0
        self.stop = threading.Event()
        self.samples: list[tuple[float, float, str]] = []  # (start offset, latency, kind)
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(4242)
        try:
            with connect(self.db_env) as conn:
                n = 0
                while not self.stop.is_set():
                    n += 1
                    ident = rng.randint(1, ROWS)
                    started = time.perf_counter()
                    if n % UPDATE_EVERY == 0:
                        conn.execute("UPDATE bench_item SET qty = qty + 1 WHERE id = %s", [ident])
                        kind = "update"
                    else:
                        conn.execute("SELECT id FROM bench_item WHERE id = %s", [ident]).fetchone()
                        kind = "select"
                    ended = time.perf_counter()
                    self.samples.append((started - self.clock0, ended - started, kind))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


class Holder(threading.Thread):
    """The long transaction: BEGIN; SELECT count(*) FROM bench_item; ... HOLD seconds ...; COMMIT."""

    def __init__(self, db_env: dict, hold: float, clock0: float):
        super().__init__(name="holder", daemon=True)
        self.db_env = db_env
        self.hold = hold
        self.clock0 = clock0
        self.holding = threading.Event()
        self.began: float | None = None
        self.ended: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.db_env, autocommit=False) as conn:
                conn.execute("SELECT count(*) FROM bench_item").fetchone()  # opens the transaction
                self.began = time.perf_counter() - self.clock0
                self.holding.set()
                time.sleep(self.hold)
                conn.commit()
                self.ended = time.perf_counter() - self.clock0
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            self.holding.set()


class Monitor(threading.Thread):
    """Polls pg_locks for an ungranted ACCESS EXCLUSIVE request on bench_item (the migration's ALTER)."""

    INTERVAL = 0.01

    def __init__(self, db_env: dict, clock0: float):
        super().__init__(name="monitor", daemon=True)
        self.db_env = db_env
        self.clock0 = clock0
        self.stop = threading.Event()
        self.waits: list[list[float]] = []  # [first seen, last seen] per wait
        self.error: BaseException | None = None

    def run(self) -> None:
        query = (
            "SELECT count(*) FROM pg_locks WHERE relation = 'bench_item'::regclass "
            "AND mode = 'AccessExclusiveLock' AND NOT granted"
        )
        try:
            with connect(self.db_env) as conn:
                open_wait: list[float] | None = None
                while not self.stop.is_set():
                    waiting = conn.execute(query).fetchone()[0] > 0
                    now = time.perf_counter() - self.clock0
                    if waiting:
                        if open_wait is None:
                            open_wait = [now, now]
                            self.waits.append(open_wait)
                        else:
                            open_wait[1] = now
                    else:
                        open_wait = None
                    time.sleep(self.INTERVAL)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


# -- the two ways to migrate ------------------------------------------------------------


def migrate_plain(project: Path, db_env: dict, timeout: float) -> dict:
    proc = subprocess.run(
        [PYTHON, "manage.py", "migrate", "--no-input", "-v", "1"],
        cwd=project,
        env=app_env(db_env),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    out = {"ok": proc.returncode == 0, "rc": proc.returncode}
    if proc.returncode:
        out["output_tail"] = (proc.stdout + proc.stderr)[-2000:]
    return out


def retries_used(result: dict) -> int | None:
    """The module's count of lock-timeout retries, whatever the name it reports it under."""
    for key in ("retries_used", "retries", "lock_retries"):
        value = result.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    for key in ("attempts",):
        value = result.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return max(value - 1, 0)
        if isinstance(value, list):
            return max(len(value) - 1, 0)
    return None


def migrate_module(project: Path, db_env: dict, args: argparse.Namespace, timeout: float) -> dict:
    module_args = {
        "project_path": str(project),
        "python": PYTHON,
        "settings": SETTINGS,
        "app_environment": db_env,
        "lock_timeout": args.lock_timeout,
        "retries": args.retries,
        "retry_delay": args.retry_delay,
    }
    argv = [
        ANSIBLE,
        "localhost",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-m",
        MODULE,
        "-a",
        json.dumps(module_args),
    ]
    proc = subprocess.run(argv, env=ansible_env(), capture_output=True, text=True, check=False, timeout=timeout)
    out: dict = {"ok": False, "rc": proc.returncode, "status": "?"}
    marker = proc.stdout.find("localhost | ")
    if marker >= 0:
        out["status"] = proc.stdout[marker + len("localhost | ") :].split(" ", 1)[0]
        try:
            brace = proc.stdout.index("{", marker)
            result, _end = json.JSONDecoder().raw_decode(proc.stdout[brace:])
        except ValueError:
            result = {}
        out["result"] = {k: v for k, v in result.items() if k not in ("target", "invocation")}
        out["retries_used"] = retries_used(result)
    out["ok"] = out["status"] in ("SUCCESS", "CHANGED")
    if not out["ok"]:
        out["output_tail"] = (proc.stdout + proc.stderr)[-2000:]
    if db_env["PGPASSWORD"] in proc.stdout + proc.stderr:
        out["ok"] = False
        out["password_leaked"] = True
    return out


# -- one scenario -----------------------------------------------------------------------


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = max(0, math.ceil(fraction * len(sorted_values)) - 1)
    return sorted_values[index]


def run_scenario(scenario: str, cluster: Cluster, project: Path, db_env: dict, args: argparse.Namespace) -> dict:
    reset_database(cluster, project, db_env)
    clock0 = time.perf_counter()
    app = App(db_env, clock0)
    monitor = Monitor(db_env, clock0)
    holder = Holder(db_env, args.hold, clock0)
    app.start()
    monitor.start()
    time.sleep(WARMUP)
    holder.start()
    holder.holding.wait(30)
    time.sleep(MIGRATION_DELAY)
    timeout = args.hold + args.retries * (args.lock_timeout_seconds + args.retry_delay + 10) + 300
    migration_began = time.perf_counter() - clock0
    if scenario == "a":
        migration = migrate_plain(project, db_env, timeout)
    else:
        migration = migrate_module(project, db_env, args, timeout)
    migration_ended = time.perf_counter() - clock0
    holder.join(args.hold + 30)
    time.sleep(TAIL)
    app.stop.set()
    monitor.stop.set()
    app.join(30)
    monitor.join(30)
    for actor in (app, monitor, holder):
        if actor.error is not None:
            sys.exit(f"the {actor.name} thread failed: {type(actor.error).__name__}: {actor.error}")

    latencies = sorted(lat for _start, lat, _kind in app.samples)
    worst_start, worst, worst_kind = max(app.samples, key=lambda s: s[1])
    waits = [round(end - begin, 3) for begin, end in monitor.waits]
    return {
        "scenario": scenario,
        "migration_ok": migration["ok"] and column_added(db_env),
        "migration": migration,
        "migration_seconds": round(migration_ended - migration_began, 3),
        "migration_began": round(migration_began, 3),
        "hold_began": round(holder.began or 0.0, 3),
        "hold_ended": round(holder.ended or 0.0, 3),
        "app_queries": len(latencies),
        "app_worst": worst,
        "app_worst_at": round(worst_start, 3),
        "app_worst_kind": worst_kind,
        "app_p99": percentile(latencies, 0.99),
        "app_median": statistics.median(latencies),
        "app_over_100ms": sum(1 for lat in latencies if lat > 0.1),
        "alter_waits": waits,
        "alter_first_wait_at": round(monitor.waits[0][0], 3) if monitor.waits else None,
    }


# -- main -------------------------------------------------------------------------------


def duration_seconds(text: str) -> float:
    """A PostgreSQL duration as lock_timeout takes it (a bare number is milliseconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|h)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 1s or 500ms)")
    factor = {None: 0.001, "ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0}[match.group(2)]
    return float(match.group(1)) * factor


def fmt(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def describe(r: dict) -> str:
    waits = r["alter_waits"]
    line = (
        f"worst {fmt(r['app_worst'])} ({r['app_worst_kind']} at t={r['app_worst_at']:.1f}s), "
        f"p99 {fmt(r['app_p99'])}, median {fmt(r['app_median'])}, {r['app_queries']} app queries "
        f"({r['app_over_100ms']} over 100 ms); migration {r['migration_seconds']:.2f}s wall"
    )
    if r["scenario"] == "b":
        used = r["migration"].get("retries_used")
        line += f", retries used {used if used is not None else '?'}"
    line += f"; ALTER waited {len(waits)}x"
    if waits:
        line += f" (longest {max(waits):.2f}s, total {sum(waits):.2f}s)"
    if not r["migration_ok"]:
        line += " — MIGRATION FAILED"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=float, default=8.0, help="seconds the long transaction stays open (8)")
    parser.add_argument("--lock-timeout", default="1s", help="lock_timeout for django_migrate_once (1s)")
    parser.add_argument("--retries", type=int, default=10, help="django_migrate_once retries (10)")
    parser.add_argument("--retry-delay", type=float, default=0.5, help="django_migrate_once retry_delay (0.5)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (a) and (b), alternating order (1)")
    parser.add_argument("--only", choices=["a", "b"], help="run one scenario only (no ratio, no goal check)")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL cluster and the project")
    args = parser.parse_args(argv)
    args.lock_timeout_seconds = duration_seconds(args.lock_timeout)
    goal = args.lock_timeout_seconds * GOAL_FACTOR

    if not (COLLECTIONS / "ansible_collections" / "safedeploy" / "django").exists():
        sys.exit(f"{COLLECTIONS}/ansible_collections/safedeploy/django is missing: run `make deps` first")
    BUILD.mkdir(parents=True, exist_ok=True)
    project = build_project(Path(tempfile.mkdtemp(prefix="lock_queue-", dir=BUILD)))
    cluster = Cluster(BUILD / "pg").ensure_started()
    rounds: list[dict] = []
    try:
        password = os.urandom(9).hex()
        cluster.create_role("bench", password, createdb=True)
        db_env = cluster.env("bench", password, DATABASE)
        server_version = cluster.psql("SHOW server_version")
        log(
            f"lock_queue: long transaction holds bench_item ({ROWS} rows) for {args.hold:g}s; app queries back to "
            f"back; (a) manage.py migrate, (b) {MODULE} lock_timeout={args.lock_timeout} retries={args.retries} "
            f"retry_delay={args.retry_delay:g}"
        )
        for rnd in range(args.rounds):
            results = {}
            order = ("a", "b") if rnd % 2 == 0 else ("b", "a")
            for scenario in [s for s in order if args.only in (None, s)]:
                results[scenario] = run_scenario(scenario, cluster, project, db_env, args)
                log(f"  round {rnd + 1} ({scenario}) {describe(results[scenario])}")
            rounds.append(results)
    finally:
        if not args.keep:
            cluster.destroy()
            shutil.rmtree(project, ignore_errors=True)
        else:
            log(f"kept: cluster {cluster.base} (port {cluster.port}), project {project}")

    invalid = []
    for rnd, results in enumerate(rounds, 1):
        for scenario, r in results.items():
            if not r["migration_ok"]:
                tail = r["migration"].get("output_tail") or json.dumps(r["migration"].get("result"))[:2000]
                invalid.append(f"round {rnd} ({scenario}): the migration failed:\n{tail}")
            elif not r["alter_waits"]:
                invalid.append(f"round {rnd} ({scenario}): the ALTER never waited for the long transaction")

    scenarios = [s for s in ("a", "b") if args.only in (None, s)]
    worst = {s: max(results[s]["app_worst"] for results in rounds) for s in scenarios}
    p99 = {s: max(results[s]["app_p99"] for results in rounds) for s in scenarios}
    ratio = worst["a"] / worst["b"] if len(scenarios) == 2 else None
    met = worst["b"] <= goal if "b" in worst else None
    log()
    log(
        f"lock_queue — hold {args.hold:g}s, lock_timeout {args.lock_timeout}, retries {args.retries}, "
        f"retry_delay {args.retry_delay:g}s, {args.rounds} round(s), PostgreSQL {server_version}"
    )
    header = f"{'scenario':<44} {'worst app':>10} {'p99 app':>9} {'app queries':>12} {'migration':>10} {'retries':>8}"
    log(header)
    log("-" * len(header))
    labels = {"a": "(a) manage.py migrate", "b": "(b) django_migrate_once"}
    for s in scenarios:
        queries = statistics.median(results[s]["app_queries"] for results in rounds)
        wall = statistics.median(results[s]["migration_seconds"] for results in rounds)
        used = [results[s]["migration"].get("retries_used") for results in rounds] if s == "b" else []
        used_text = "-" if s == "a" else ",".join("?" if u is None else str(u) for u in used)
        log(f"{labels[s]:<44} {fmt(worst[s]):>10} {fmt(p99[s]):>9} {queries:>12.0f} {wall:>9.2f}s {used_text:>8}")
    log("(worst and p99: the highest over the rounds; app queries and migration: medians)")
    if ratio is not None:
        log(f"worst(a) / worst(b) = {ratio:.1f}x")
    if met is not None and invalid:
        log(f"GOAL not judged: the run is invalid (worst app latency in (b) {fmt(worst['b'])})")
    elif met is not None:
        log(
            f"GOAL worst app latency in (b) {fmt(worst['b'])} <= lock_timeout x {GOAL_FACTOR:g} = {fmt(goal)}: "
            + ("goal met" if met else "goal NOT met")
        )
    for line in invalid:
        log(f"INVALID {line}")

    RESULTS.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
                "postgresql": server_version,
                "settings": {
                    "hold": args.hold,
                    "lock_timeout": args.lock_timeout,
                    "retries": args.retries,
                    "retry_delay": args.retry_delay,
                    "rows": ROWS,
                    "rounds": args.rounds,
                },
                "rounds": rounds,
                "worst": worst,
                "p99": p99,
                "ratio_worst_a_over_b": ratio,
                "goal_seconds": goal,
                "goal_met": met,
                "invalid": invalid,
            },
            indent=2,
            sort_keys=True,
            default=str,
        )
    )
    log(f"results: {RESULTS.relative_to(REPO)}")
    if invalid:
        return 2
    return 1 if met is False else 0


if __name__ == "__main__":
    raise SystemExit(main())
