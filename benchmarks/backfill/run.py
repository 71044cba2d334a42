"""backfill: what the application's writes feel while a large table is backfilled, and at what speed.

One command (from the repository root)::

    .venv/bin/python benchmarks/backfill/run.py [--rows 1000000] [--batch-size 5000] [--pause 0]
                                                [--write-interval 0.005] [--margin 0.1] [--keep]

It starts its own PostgreSQL (devtools/pgcluster.py), writes a tiny Django project (settings only: the
module reads DATABASES from it) and, per scenario, builds the same table afresh: ``bench_row`` (id bigserial
primary key, old integer, new integer NULL, note text) with ``--rows`` rows, VACUUM ANALYZE, CHECKPOINT.
While each scenario runs, an "application" thread (its own autocommit connection) writes without stopping:
an ``UPDATE bench_row SET note = ... WHERE id = <random>`` (and one ``INSERT`` every 10 writes), sleeping
``--write-interval`` between writes, and records every write's latency.

  (a) one statement: ``UPDATE bench_row SET new = old WHERE new IS NULL`` (every row at once);
  (b) ``safedeploy.django.django_backfill`` through ``ansible localhost`` (set ``new = old``, where
      ``new IS NULL``, ``--batch-size``, ``--pause``), the same work.

Printed per scenario: rows/s (rows / the work's own duration: the statement for (a), the module's
``elapsed`` for (b), whose wall time with Ansible's start-up is printed too), the number of application
writes, their worst, p99 and median latency, and for (b) the longest batch (``longest_batch_seconds``).
Goals, checked on (b):
  - the application's writes never wait longer than one batch: worst app write <= longest batch + --margin
    (the margin absorbs scheduling noise on a busy machine; the idle worst is printed for reference);
  - throughput >= 0.5x that of the single UPDATE.
Exit status 1 when a goal is not met, 2 when a run is invalid (a scenario failed, or left rows undone).
Everything is bounded in time (statement_timeout, subprocess timeouts); the cluster is destroyed at the end.
Figures also go to .build/bench/backfill/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
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
BUILD = REPO / ".build" / "bench" / "backfill"
RESULTS = BUILD / "results.json"
COLLECTIONS = REPO / ".build" / "collections"
PYTHON = sys.executable  # the application's interpreter: the repository venv has Django and psycopg
ANSIBLE = str(Path(sys.executable).parent / "ansible")
MODULE = "safedeploy.django.django_backfill"
SETTINGS = "backfill_bench_settings"
DATABASE = "backfill_bench"
INSERT_EVERY = 10
IDLE_SECONDS = 3.0  # application writes alone, for reference
SETTLE = 0.5  # seconds of application writes before and after each scenario's work
SCENARIO_TIMEOUT = 900  # seconds: a scenario that takes longer is invalid
THROUGHPUT_GOAL = 0.5

sys.path.insert(0, str(REPO))
from devtools.pgcluster import Cluster  # noqa: E402


def log(message: str = "") -> None:
    print(message, flush=True)


SETTINGS_PY = """\
import os
SECRET_KEY = "backfill-bench"
USE_TZ = True
INSTALLED_APPS = []
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


def build_project(dest: Path) -> Path:
    (dest / "manage.py").write_text(MANAGE_PY)
    (dest / f"{SETTINGS}.py").write_text(SETTINGS_PY)
    return dest


def connect(db_env: dict, *, autocommit: bool = True, name: str = "backfill bench") -> psycopg.Connection:
    return psycopg.connect(host=db_env["PGHOST"], port=db_env["PGPORT"], user=db_env["PGUSER"],
                           password=db_env["PGPASSWORD"], dbname=db_env["PGDATABASE"], autocommit=autocommit,
                           application_name=name)


def build_table(db_env: dict, rows: int) -> None:
    with connect(db_env) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_row")
        conn.execute("DROP TABLE IF EXISTS safedeploy_backfill")
        conn.execute("CREATE TABLE bench_row (id bigserial PRIMARY KEY, old integer NOT NULL, new integer, "
                     "note text)")
        conn.execute("INSERT INTO bench_row (old, note) SELECT g %% 1000, 'row ' || g "
                     "FROM generate_series(1, %s) g", (rows,))
        conn.execute("VACUUM ANALYZE bench_row")  # then CHECKPOINT, as the superuser (run_scenario)


class AppWriter(threading.Thread):
    """The application: small writes on random rows, back to back, each one's latency recorded."""

    def __init__(self, db_env: dict, max_id: int, interval: float):
        super().__init__(daemon=True)
        self.db_env = db_env
        self.max_id = max_id
        self.interval = interval
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (start, epoch seconds; latency, seconds)
        self.errors: list[str] = []

    def run(self) -> None:
        rng = random.Random(42)
        with connect(self.db_env, name="backfill bench app") as conn:
            conn.execute("SET statement_timeout = '600s'")
            n = 0
            while not self.stop_event.is_set():
                n += 1
                wall = time.time()
                started = time.monotonic()
                try:
                    if n % INSERT_EVERY == 0:
                        conn.execute("INSERT INTO bench_row (old, note) VALUES (%s, 'app insert')",
                                     (rng.randrange(1000),))
                    else:
                        conn.execute("UPDATE bench_row SET note = %s WHERE id = %s",
                                     (f"app {n}", rng.randrange(1, self.max_id + 1)))
                except psycopg.Error as exc:
                    self.errors.append(str(exc).strip()[:200])
                self.samples.append((wall, time.monotonic() - started))
                if self.interval:
                    time.sleep(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


def latency_figures(samples: list[tuple[float, float]], start: float, end: float, slow: float | None = None) -> dict:
    """Latency of the writes that started in [start, end] (epoch seconds); ``slow``: count those above it."""
    during = sorted(s for t, s in samples if start <= t <= end)
    if not during:
        return {"writes": 0, "worst": None, "p99": None, "median": None, "slow": None}
    p99 = during[min(len(during) - 1, int(len(during) * 0.99))]
    return {"writes": len(during), "worst": round(during[-1], 4), "p99": round(p99, 4),
            "median": round(statistics.median(during), 4),
            "slow": None if slow is None else sum(1 for s in during if s > slow)}


def ansible_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DJANGO_"))}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCALHOST_WARNING="False",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="False", ANSIBLE_DEPRECATION_WARNINGS="False",
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return env


def parse_adhoc(stdout: str) -> tuple[str, dict]:
    marker = stdout.index("localhost | ")
    status = stdout[marker + len("localhost | "):].split(" ", 1)[0]
    result, _end = json.JSONDecoder().raw_decode(stdout[stdout.index("{", marker):])
    return status, result


def single_update(db_env: dict) -> dict:
    with connect(db_env, name="backfill bench single update") as conn:
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{SCENARIO_TIMEOUT}s",))
        window = time.time()
        started = time.monotonic()
        cursor = conn.execute("UPDATE bench_row SET new = old WHERE new IS NULL")
        seconds = time.monotonic() - started
        return {"ok": True, "rows": cursor.rowcount, "seconds": round(seconds, 3),
                "window": (window, window + seconds)}


def module_backfill(project: Path, db_env: dict, args) -> dict:
    module_args = {
        "project_path": str(project), "python": PYTHON, "settings": SETTINGS, "app_environment": db_env,
        "name": "bench", "table": "bench_row", "set": "new = old", "where": "new IS NULL",
        "batch_size": args.batch_size, "pause": args.pause, "timeout": SCENARIO_TIMEOUT,
    }
    argv = [ANSIBLE, "localhost", "-m", MODULE, "-a", json.dumps(module_args)]
    started = time.monotonic()
    proc = subprocess.run(argv, env=ansible_env(), capture_output=True, text=True, check=False,
                          timeout=SCENARIO_TIMEOUT + 120)
    wall = time.monotonic() - started
    try:
        status, result = parse_adhoc(proc.stdout)
    except ValueError:
        return {"ok": False, "error": (proc.stdout + proc.stderr)[-2000:]}
    if db_env["PGPASSWORD"] in proc.stdout + proc.stderr:
        return {"ok": False, "error": "the database password leaked into Ansible's output"}
    ok = status == "CHANGED" and result.get("status") == "finished"
    return {"ok": ok, "error": None if ok else result.get("msg") or status, "rows": result.get("rows_done"),
            "seconds": result.get("elapsed"), "wall_seconds": round(wall, 3), "batches": result.get("batches"),
            "longest_batch": result.get("longest_batch_seconds"), "retries": result.get("retries"),
            "rows_per_second_reported": result.get("rows_per_second"),
            # the run itself (the state row's timestamps, same clock), without Ansible's start-up
            "window": window_of(result)}


def window_of(result: dict) -> tuple[float, float] | None:
    import datetime

    try:
        return (datetime.datetime.fromisoformat(result["started_at"]).timestamp(),
                datetime.datetime.fromisoformat(result["finished_at"]).timestamp())
    except (KeyError, TypeError, ValueError):
        return None


def run_scenario(name: str, cluster: Cluster, project: Path, db_env: dict, args, slow: float) -> dict:
    build_table(db_env, args.rows)
    cluster.psql("CHECKPOINT")
    writer = AppWriter(db_env, args.rows, args.write_interval)
    writer.start()
    try:
        time.sleep(SETTLE)
        work = single_update(db_env) if name == "a" else module_backfill(project, db_env, args)
        time.sleep(SETTLE)
    finally:
        writer.stop()
    with connect(db_env) as conn:
        left = conn.execute("SELECT count(*) FROM bench_row WHERE new IS NULL AND note <> 'app insert'"
                            ).fetchone()[0]
    start, end = work.get("window") or (0, 0)
    figures = latency_figures(writer.samples, start, end, slow)
    rate = round(work["rows"] / work["seconds"], 1) if work.get("ok") and work.get("seconds") else None
    return {"scenario": name, "work": work, "rows_left": left, "rows_per_second": rate, "app": figures,
            "app_errors": writer.errors[:5]}


def idle_reference(db_env: dict, rows: int, interval: float) -> dict:
    writer = AppWriter(db_env, rows, interval)
    writer.start()
    try:
        time.sleep(IDLE_SECONDS)
    finally:
        writer.stop()
    return latency_figures(writer.samples, 0, float("inf"))


def ms(value) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the table (1000000)")
    parser.add_argument("--batch-size", type=int, default=5000, help="django_backfill batch_size (5000)")
    parser.add_argument("--pause", type=float, default=0.0, help="django_backfill pause (0)")
    parser.add_argument("--write-interval", type=float, default=0.005,
                        help="seconds the application sleeps between two writes (0.005)")
    parser.add_argument("--margin", type=float, default=0.1,
                        help="goal: worst app write <= longest batch + this many seconds (0.1)")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL cluster and the project")
    args = parser.parse_args(argv)

    if not (COLLECTIONS / "ansible_collections" / "safedeploy" / "django").exists():
        sys.exit(f"{COLLECTIONS}/ansible_collections/safedeploy/django is missing: run `make deps` first")
    BUILD.mkdir(parents=True, exist_ok=True)
    project = build_project(Path(tempfile.mkdtemp(prefix="backfill-", dir=BUILD)))
    cluster = Cluster(BUILD / "pg").ensure_started()
    results: dict = {}
    try:
        password = os.urandom(9).hex()
        cluster.create_role("bench", password, createdb=True)
        cluster.drop_database(DATABASE)
        cluster.create_database(DATABASE, owner="bench")
        db_env = cluster.env("bench", password, DATABASE)
        server_version = cluster.psql("SHOW server_version")
        log(f"backfill: {args.rows} rows, app writes every {args.write_interval:g}s on random rows; (a) one UPDATE, "
            f"(b) {MODULE} batch_size={args.batch_size} pause={args.pause:g}")
        build_table(db_env, min(args.rows, 100_000))
        results["idle"] = idle_reference(db_env, min(args.rows, 100_000), args.write_interval)
        log(f"  idle app writes: {results['idle']['writes']}, worst {ms(results['idle']['worst'])}, "
            f"p99 {ms(results['idle']['p99'])}")
        for scenario in ("a", "b"):
            results[scenario] = run_scenario(scenario, cluster, project, db_env, args, results["idle"]["worst"])
            r = results[scenario]
            log(f"  ({scenario}) ok={r['work'].get('ok')} rows/s {r['rows_per_second']} app writes "
                f"{r['app']['writes']} worst {ms(r['app']['worst'])} p99 {ms(r['app']['p99'])}")
    finally:
        if not args.keep:
            cluster.destroy()
            shutil.rmtree(project, ignore_errors=True)
        else:
            log(f"kept: cluster {cluster.base} (port {cluster.port}), project {project}")

    invalid = []
    for scenario in ("a", "b"):
        r = results.get(scenario)
        if r is None:
            invalid.append(f"({scenario}) did not run")
        elif not r["work"].get("ok"):
            invalid.append(f"({scenario}) failed: {r['work'].get('error')}")
        elif r["rows_left"]:
            invalid.append(f"({scenario}) left {r['rows_left']} rows with new IS NULL")
        elif r["app"]["writes"] == 0:
            invalid.append(f"({scenario}) no application write ran during the work")

    a, b = results.get("a"), results.get("b")
    log()
    log(f"backfill — {args.rows} rows, batch_size {args.batch_size}, pause {args.pause:g}s, "
        f"PostgreSQL {server_version}, {platform.machine()}, {os.cpu_count()} CPUs")
    log(f"{'':24} {'rows/s':>10} {'seconds':>8} {'app writes':>10} {'worst':>10} {'p99':>10} {'median':>9} "
        f"{'> idle worst':>12}")
    log(f"{'idle (no backfill)':24} {'-':>10} {IDLE_SECONDS:>8.1f} {results['idle']['writes']:>10} "
        f"{ms(results['idle']['worst']):>10} {ms(results['idle']['p99']):>10} {ms(results['idle']['median']):>9} "
        f"{'-':>12}")
    for label, r in (("(a) single UPDATE", a), ("(b) django_backfill", b)):
        if r and r["work"].get("ok"):
            log(f"{label:24} {r['rows_per_second']:>10} {r['work']['seconds']:>8.2f} {r['app']['writes']:>10} "
                f"{ms(r['app']['worst']):>10} {ms(r['app']['p99']):>10} {ms(r['app']['median']):>9} "
                f"{r['app']['slow']:>12}")
    verdicts = {}
    if not invalid:
        longest = b["work"]["longest_batch"]
        log(f"(b) batches {b['work']['batches']}, longest batch {ms(longest)}, lock retries {b['work']['retries']}, "
            f"wall time with Ansible's start-up {b['work']['wall_seconds']:.2f}s "
            f"({round(args.rows / b['work']['wall_seconds'], 1)} rows/s)")
        ratio = b["rows_per_second"] / a["rows_per_second"]
        verdicts["latency"] = b["app"]["worst"] <= longest + args.margin
        verdicts["throughput"] = ratio >= THROUGHPUT_GOAL
        log(f"worst app write (a) / (b): {a['app']['worst'] / b['app']['worst']:.1f}x")
        log(f"goal: worst app write during (b) {ms(b['app']['worst'])} <= longest batch {ms(longest)} + margin "
            f"{ms(args.margin)}: {'MET' if verdicts['latency'] else 'NOT MET'}")
        log(f"goal: throughput (b)/(a) {ratio:.2f} >= {THROUGHPUT_GOAL}: "
            f"{'MET' if verdicts['throughput'] else 'NOT MET'}")
    for problem in invalid:
        log(f"INVALID: {problem}")

    RESULTS.write_text(json.dumps({"args": vars(args), "server_version": server_version, "results": results,
                                   "verdicts": verdicts, "invalid": invalid}, indent=2, default=str))
    log(f"figures: {RESULTS.relative_to(REPO)}")
    if invalid:
        return 2
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
