"""snapshot: how fast pg_snapshot dumps a ~1 GB database, against a bare ``pg_dump -Fc``.

One command (from the repository root)::

    .venv/bin/python benchmarks/snapshot/run.py [--size-gb 1.0] [--rounds 3] [--jobs 2]
                                                 [--bare-directory] [--retries 2] [--quiet-wait 120]
                                                 [--keep]

It starts its own PostgreSQL (devtools/pgcluster.py) and generates a database of about
``--size-gb`` GB (pg_database_size, tables and indexes; GB = 10^9 bytes): four tables of
comparable size (customers, orders, order_lines, events) filled with generate_series rows of
text, numeric, timestamp and jsonb columns drawn from word lists, numbers and md5 fragments,
so the data compresses like ordinary application data, not like a column of identical strings.
Then, in the same run, ``--rounds`` times, rotating the order each round:

(1) bare ``pg_dump -Fc`` into a file: the baseline; its throughput is database size / seconds;
(2) ``safedeploy.django.pg_snapshot`` through ``ansible localhost -m`` in the default (custom)
    format, the password given as the module's ``password`` argument: the dump phase and the
    verification are reported apart, from the module's ``timings`` when it returns them, else
    from the lifetimes of its pg_dump and pg_restore processes (watched in /proc);
(3) the same module with ``format: directory`` and ``jobs: --jobs``.

Printed: the size, the medians of each, throughputs in MB/s (10^6 bytes) and the ratios to the
bare dump (bare seconds / our dump-phase seconds: above 1 is faster). Goals: (2)'s dump phase
>= 0.9x the bare dump's throughput; (3)'s dump phase faster than the bare dump (ratio > 1.0).
Exit status 1 when a goal is not met, 2 when the run is invalid (a dump failed, the password
showed up in the output, or the module lacks the options a scenario needs).
Figures also go to .build/bench/snapshot/results.json.

On a small shared machine other jobs distort the figures (on 2 cores, one other busy process
halves a pg_dump's throughput), so before each measurement the script waits (up to
``--quiet-wait`` seconds) until the CPUs are mostly idle, counts the CPU time other jobs used
during it (the machine's busy time minus this script's processes and the cluster's), repeats a
measurement during which they used over 10% of the CPUs (``--retries`` times, keeping the
cleanest attempt) and flags those that stayed noisy.
The OS page cache is not dropped between runs (that needs privileges a container does not
have): with the database smaller than the RAM every scenario reads from the page cache, and
rotating the order over the rounds spreads what is left of the cache effects evenly. ``--keep``
keeps the cluster and the generated database (stopped) for the next run, which reuses them if
the size and the generator match; without it everything is removed at the end.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import yaml

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / ".build" / "bench" / "snapshot"
RESULTS = BUILD / "results.json"
OUT = BUILD / "out"  # the archives; emptied after every measurement
COLLECTIONS = REPO / ".build" / "collections"
MODULE = "safedeploy.django.pg_snapshot"
MODULE_SOURCE = REPO / "plugins" / "modules" / "pg_snapshot.py"
ANSIBLE = str(Path(sys.executable).parent / "ansible")
DATABASE = "snapbench"
ROLE = "bench"
GENERATOR = "snapshot-bench generator 1"  # change when the data changes: a kept database is then rebuilt
GB = 1e9
MB = 1e6
GOAL_CUSTOM = 0.9  # pg_snapshot (custom) dump phase: at least this x the bare dump's throughput
GOAL_DIRECTORY = 1.0  # pg_snapshot (directory, jobs): ratio to the bare dump above this
SCENARIOS = ("bare", "custom", "directory")
QUIET_BUSY = 0.25  # before each measurement, wait until at most this fraction of the CPUs is busy
FOREIGN_MAX = 0.10  # a measurement during which other jobs used more of the machine than this is noisy

sys.path.insert(0, str(REPO))
from devtools.pgcluster import Cluster  # noqa: E402


def log(message: str = "") -> None:
    print(message, flush=True)


# -- the database ---------------------------------------------------------------------------

# fmt: off
WORDS = [
    "account", "active", "amber", "anchor", "apple", "april", "arrow", "autumn", "basket", "beacon", "bridge",
    "bright", "canvas", "castle", "cedar", "copper", "coral", "cotton", "crystal", "delta", "desert", "eagle",
    "ember", "falcon", "forest", "garden", "glacier", "harbor", "hazel", "island", "jasper", "kettle",
    "lantern", "linen", "maple", "marble", "meadow", "meteor", "nickel", "orbit", "orchid", "pebble",
    "pepper", "quartz", "raven", "river", "saffron", "silver", "spruce", "stone", "summit", "thunder",
    "timber", "velvet", "walnut", "willow", "winter", "yellow", "zephyr",
]
CITIES = [
    "Amsterdam", "Berlin", "Bordeaux", "Brno", "Dublin", "Gdansk", "Geneva", "Ghent", "Lisbon", "Lyon",
    "Madrid", "Malmo", "Milan", "Munich", "Nantes", "Oslo", "Porto", "Prague", "Riga", "Rotterdam", "Seville",
    "Tallinn", "Turin", "Utrecht", "Valencia", "Vienna", "Vilnius", "Warsaw", "Zurich",
]
# fmt: on
STATUSES = ["new", "paid", "packed", "shipped", "delivered", "returned", "cancelled"]
EVENT_KINDS = ["page_view", "login", "logout", "add_to_cart", "checkout", "search", "api_call", "error"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "shop.example"]


def _array(values: list[str]) -> str:
    return "ARRAY[" + ",".join(f"'{v}'" for v in values) + "]"


def pick(values: list[str]) -> str:
    """SQL: one of ``values`` at random, per row."""
    return f"({_array(values)})[1 + floor(random() * {len(values)})::int]"


def sentence(words: int) -> str:
    return " || ' ' || ".join(pick(WORDS) for _ in range(words))


SCHEMA = """
CREATE TABLE customers (
    id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, city text NOT NULL,
    signed_up timestamptz NOT NULL, balance numeric(12,2) NOT NULL, notes text);
CREATE INDEX customers_email ON customers (email);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL, placed_at timestamptz NOT NULL,
    total numeric(12,2) NOT NULL, shipping_address text NOT NULL, note text);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE INDEX orders_placed_at ON orders (placed_at);
CREATE TABLE order_lines (
    id bigint PRIMARY KEY, order_id bigint NOT NULL, sku text NOT NULL, quantity int NOT NULL,
    unit_price numeric(10,2) NOT NULL, description text);
CREATE INDEX order_lines_order ON order_lines (order_id);
CREATE TABLE events (
    id bigint PRIMARY KEY, happened_at timestamptz NOT NULL, kind text NOT NULL, payload jsonb NOT NULL);
CREATE INDEX events_happened_at ON events (happened_at);
"""

# (table, share of the data, INSERT ... SELECT over generate_series(%(lo)s, %(hi)s) g)
TABLES = [
    (
        "customers",
        0.15,
        f"""INSERT INTO customers SELECT g,
            initcap({pick(WORDS)}) || ' ' || initcap({pick(WORDS)}),
            {pick(WORDS)} || '.' || substr(md5(g::text), 1, 6) || '@' || {pick(DOMAINS)},
            {pick(CITIES)},
            timestamptz '2019-01-01' + random() * interval '2000 days',
            round((random() * 20000 - 2000)::numeric, 2),
            CASE WHEN random() < 0.6 THEN {sentence(10)} END
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g""",
    ),
    (
        "orders",
        0.30,
        f"""INSERT INTO orders SELECT g,
            1 + floor(random() * %(customers)s::bigint)::bigint,
            {pick(STATUSES)},
            timestamptz '2020-01-01' + random() * interval '1800 days',
            round((random() * 900 + 5)::numeric, 2),
            (1 + floor(random() * 400))::int || ' ' || initcap({pick(WORDS)}) || ' Street, '
                || lpad((floor(random() * 99999))::int::text, 5, '0') || ' ' || {pick(CITIES)},
            CASE WHEN random() < 0.3 THEN {sentence(6)} || ', ref ' || substr(md5(random()::text), 1, 12) END
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g""",
    ),
    (
        "order_lines",
        0.35,
        f"""INSERT INTO order_lines SELECT g,
            1 + floor(random() * %(orders)s::bigint)::bigint,
            'SKU-' || upper({pick(WORDS)}) || '-' || lpad((floor(random() * 5000))::int::text, 4, '0'),
            1 + floor(random() * random() * 12)::int,
            round((random() * 300 + 0.5)::numeric, 2),
            initcap({sentence(5)}) || ', size ' || (ARRAY['S','M','L','XL'])[1 + floor(random() * 4)::int]
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g""",
    ),
    (
        "events",
        0.20,
        f"""INSERT INTO events SELECT g,
            timestamptz '2024-01-01' + random() * interval '365 days',
            {pick(EVENT_KINDS)},
            jsonb_build_object(
                'user', 1 + floor(random() * %(customers)s::bigint)::bigint,
                'path', '/' || {pick(WORDS)} || '/' || {pick(WORDS)} || '/' || (floor(random() * 1000))::int,
                'ip', '10.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int || '.'
                    || floor(random() * 256)::int,
                'session', substr(md5(g::text || 'session'), 1, 16),
                'ms', round((random() * random() * 2000)::numeric, 1))
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g""",
    ),
]


def connect(db_env: dict) -> psycopg.Connection:
    return psycopg.connect(
        host=db_env["PGHOST"],
        port=db_env["PGPORT"],
        user=db_env["PGUSER"],
        password=db_env["PGPASSWORD"],
        dbname=db_env["PGDATABASE"],
        autocommit=True,
        application_name="snapshot bench",
    )


def database_marker(size_gb: float) -> str:
    return f"{GENERATOR}, size_gb={size_gb:g}"


def kept_database_matches(cluster: Cluster, size_gb: float) -> bool:
    comment = cluster.psql(
        f"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{DATABASE}'"
    )
    return comment == database_marker(size_gb)


def generate(cluster: Cluster, db_env: dict, size_gb: float) -> None:
    """Fill DATABASE up to about size_gb GB; each table gets its share (heap and indexes)."""
    cluster.drop_database(DATABASE)
    cluster.create_database(DATABASE, owner=ROLE)
    started = time.perf_counter()
    with connect(db_env) as conn:
        conn.execute("SELECT setseed(0.4242)")
        conn.execute(SCHEMA)
        base = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        room = max(size_gb * GB - base, 10 * MB)
        counts: dict[str, int] = {}
        for table, share, insert in TABLES:
            target = share * room
            rows, size, chunk = 0, 0, 10_000
            while size < target * 0.995:
                params = {"lo": rows + 1, "hi": rows + chunk, **{t: max(n, 1) for t, n in counts.items()}}
                params.setdefault("customers", 1)
                params.setdefault("orders", 1)
                conn.execute(insert, params)
                rows += chunk
                size = conn.execute("SELECT pg_total_relation_size(%s::regclass)", [table]).fetchone()[0]
                per_row = size / rows
                chunk = int(min(max((target - size) / per_row, 1000), 1_000_000)) + 1
            counts[table] = rows
            log(f"  {table}: {rows:,} rows, {size / MB:,.0f} MB ({time.perf_counter() - started:.0f}s)")
        for table, _share, _insert in TABLES:
            conn.execute(f"VACUUM (FREEZE, ANALYZE) {table}")  # hint bits set now, not by the first dump
        # last: a database whose generation was interrupted has no marker and is never reused
        conn.execute(f"COMMENT ON DATABASE {DATABASE} IS '{database_marker(size_gb)}'")
    cluster.psql("CHECKPOINT")
    log(f"  generated in {time.perf_counter() - started:.0f}s")


def describe_database(db_env: dict) -> dict:
    with connect(db_env) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        tables = {
            name: {"rows": rows, "bytes": total}
            for name, rows, total in conn.execute(
                "SELECT relname, reltuples::bigint, pg_total_relation_size(oid) FROM pg_class "
                "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY relname"
            )
        }
    return {"size": size, "tables": tables}


# -- watching the module's pg_dump and pg_restore ------------------------------------------


class ProcessWatch(threading.Thread):
    """Polls /proc for pg_dump/pg_restore processes working in ``dest``; records when each was seen."""

    INTERVAL = 0.05

    def __init__(self, dest: Path):
        super().__init__(name="procwatch", daemon=True)
        self.dest = str(dest)
        self.stop = threading.Event()
        self.seen: dict[int, list] = {}  # pid -> [program, first seen, last seen]

    def _classify(self, pid: int) -> str | None:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        program = os.path.basename(argv[0].decode(errors="replace"))
        if program in ("pg_dump", "pg_restore") and any(self.dest.encode() in arg for arg in argv[1:]):
            return program
        return None

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.perf_counter()
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                if pid in self.seen:
                    self.seen[pid][2] = now
                else:
                    # every time, not once per pid: between fork and exec a child still shows its parent's argv
                    program = self._classify(pid)
                    if program:
                        self.seen[pid] = [program, now, now]
            time.sleep(self.INTERVAL)

    def span(self, program: str) -> float | None:
        """From the first sighting to the last of ``program``'s processes (None if never seen)."""
        spans = [(first, last) for prog, first, last in self.seen.values() if prog == program]
        if not spans:
            return None
        return max(last for _first, last in spans) - min(first for first, _last in spans) + self.INTERVAL


# -- the three ways to dump -----------------------------------------------------------------


def output_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def empty_out() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)


def bare_dump(cluster: Cluster, db_env: dict, directory_jobs: int | None = None) -> dict:
    empty_out()
    if directory_jobs:
        target = OUT / "bare.dir"
        argv = [cluster.bin("pg_dump"), "--format=directory", f"--jobs={directory_jobs}"]
    else:
        target = OUT / "bare.dump"
        argv = [cluster.bin("pg_dump"), "--format=custom"]
    argv += ["--no-password", "--file", str(target)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(db_env)
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=7200)
    seconds = time.perf_counter() - started
    out = {"ok": proc.returncode == 0, "seconds": round(seconds, 3), "archive_bytes": output_bytes(target)}
    if proc.returncode or proc.stderr.strip():
        out["stderr"] = proc.stderr[-2000:]
    empty_out()
    return out


def ansible_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_LOCALHOST_WARNING="False",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
        ANSIBLE_DEPRECATION_WARNINGS="False",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    return env


def module_phases(result: dict) -> dict | None:
    """Dump and verification seconds from the module's ``timings``, if it returns them."""
    timings = result.get("timings")
    if not isinstance(timings, dict):
        return None
    numbers = {str(k): float(v) for k, v in timings.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def first(*names: str) -> float | None:
        for name in names:
            if name in numbers:
                return numbers[name]
        return None

    dump = first("dump", "dump_seconds", "pg_dump", "pg_dump_seconds")
    if dump is None:
        parts = [v for k, v in numbers.items() if "dump" in k and "total" not in k]
        dump = sum(parts) if parts else None
    verify = first("verify", "verify_seconds", "verification", "verification_seconds")
    if verify is None:
        parts = [v for k, v in numbers.items() if re.search(r"verif|restore|list|read|sha|checksum", k)]
        verify = sum(parts) if parts else None
    if dump is None:
        return None
    return {"dump": dump, "verify": verify, "raw": timings}


def module_snapshot(db_env: dict, name: str, password: str, bin_dir: str, extra: dict) -> dict:
    empty_out()
    dest = OUT / "snapshots"
    module_args = {
        "host": db_env["PGHOST"],
        "port": int(db_env["PGPORT"]),
        "database": db_env["PGDATABASE"],
        "user": db_env["PGUSER"],
        "password": password,
        "dest": str(dest),
        "name": name,
        "bin_dir": bin_dir,
        **extra,
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
    watch = ProcessWatch(dest)
    watch.start()
    started = time.perf_counter()
    proc = subprocess.run(argv, env=ansible_env(), capture_output=True, text=True, check=False, timeout=7200)
    seconds = time.perf_counter() - started
    watch.stop.set()
    watch.join(10)
    out: dict = {"ok": False, "rc": proc.returncode, "status": "?", "seconds": round(seconds, 3)}
    result: dict = {}
    marker = proc.stdout.find("localhost | ")
    if marker >= 0:
        out["status"] = proc.stdout[marker + len("localhost | ") :].split(" ", 1)[0]
        try:
            result, _end = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("{", marker) :])
        except ValueError:
            result = {}
    out["ok"] = out["status"] == "CHANGED" and not result.get("reused")
    out["result"] = {k: v for k, v in result.items() if k not in ("invocation", "tables", "manifest")}
    out["archive_bytes"] = result.get("size") or output_bytes(Path(result.get("path") or dest / f"{name}.dump"))
    observed = {"dump": watch.span("pg_dump"), "verify": watch.span("pg_restore")}
    out["observed"] = {k: None if v is None else round(v, 3) for k, v in observed.items()}
    phases = module_phases(result)
    if phases:
        out.update(dump_seconds=phases["dump"], verify_seconds=phases["verify"], phase_source="module timings")
    else:
        out.update(dump_seconds=observed["dump"], verify_seconds=observed["verify"], phase_source="observed")
    if out["dump_seconds"] is None and out["ok"]:
        out["ok"] = False
        out["error"] = "no dump-phase time: no timings returned and no pg_dump process seen"
    if not out["ok"]:
        out["output_tail"] = (proc.stdout + proc.stderr)[-2500:]
    if password in proc.stdout + proc.stderr:
        out["ok"] = False
        out["password_leaked"] = True
        out.pop("output_tail", None)
    empty_out()
    return out


def module_options() -> set[str]:
    """The options pg_snapshot documents (scenario (3) needs format and jobs)."""
    tree = ast.parse(MODULE_SOURCE.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DOCUMENTATION" for t in node.targets):
            return set((yaml.safe_load(node.value.value) or {}).get("options") or {})
    return set()


# -- a quiet machine ------------------------------------------------------------------------


def cpu_busy(window: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``window`` seconds (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    total0, idle0 = sample()
    time.sleep(window)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


class ForeignCpu:
    """CPU time other jobs used while a measurement ran: all the machine's busy time minus our own.

    Ours: this process, its reaped descendants (ansible, the module, pg_dump, pg_restore) and the
    benchmark cluster's server processes (the postmaster and the backends it reaped).
    """

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, cluster: Cluster):
        self.postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])

    def _sample(self) -> tuple[float, float, float]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / self.TICK  # all but idle and iowait
        server = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(entry.name) == self.postmaster:
                server += sum(int(v) for v in stat[11:15])  # utime stime cutime cstime (reaped backends)
            elif int(stat[1]) == self.postmaster:
                server += int(stat[11]) + int(stat[12])  # live (or not yet reaped) backends
        server /= self.TICK
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
        return busy, server, ours

    def __enter__(self) -> ForeignCpu:
        self.started = time.perf_counter()
        self.before = self._sample()
        return self

    def __exit__(self, *_exc) -> None:
        wall = time.perf_counter() - self.started
        busy, server, ours = (a - b for a, b in zip(self._sample(), self.before, strict=True))
        self.seconds = max(busy - server - ours, 0.0)
        self.share = self.seconds / max(wall * (os.cpu_count() or 1), 1e-9)


def wait_for_quiet(limit: float, threshold: float = QUIET_BUSY) -> tuple[float, float]:
    """Wait (up to ``limit`` seconds) until the CPUs are mostly idle; returns (busy fraction, seconds waited)."""
    started = time.perf_counter()
    busy = cpu_busy()
    while busy > threshold and time.perf_counter() - started < limit:
        busy = cpu_busy()
    return busy, time.perf_counter() - started


# -- main -----------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="database size to generate, GB (1.0)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, rotating the order of the scenarios (3)")
    parser.add_argument("--jobs", type=int, default=2, help="pg_snapshot jobs in the directory format (2)")
    parser.add_argument(
        "--bare-directory", action="store_true", help="also time a bare pg_dump -Fd --jobs (reference only)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the cluster and the generated database")
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help=f"repeat a measurement while other jobs used over {FOREIGN_MAX:.0%} of the CPUs during it (2)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each measurement, wait up to this many seconds for the CPUs to be idle (120)",
    )
    args = parser.parse_args(argv)

    if not (COLLECTIONS / "ansible_collections" / "safedeploy" / "django").exists():
        sys.exit(f"{COLLECTIONS}/ansible_collections/safedeploy/django is missing: run `make deps` first")
    options = module_options()
    missing = {"format", "jobs"} - options
    scenarios = [s for s in SCENARIOS if s != "directory" or not missing]
    if args.bare_directory:
        scenarios.append("bare_directory")
    invalid: list[str] = []
    if missing:
        invalid.append(f"pg_snapshot has no {' and no '.join(sorted(missing))} option: scenario (3) not run")
    failed: set[str] = set()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (finally) when killed
    total_started = time.perf_counter()
    BUILD.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(BUILD / "pg").ensure_started()
    rounds: list[dict] = []
    noisy: list[str] = []  # measurements that started while something else was using the CPUs
    try:
        password = os.urandom(9).hex()
        cluster.create_role(ROLE, password, createdb=True)
        db_env = cluster.env(ROLE, password, DATABASE)
        server_version = cluster.psql("SHOW server_version")
        pg_dump_version = subprocess.run(
            [cluster.bin("pg_dump"), "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if kept_database_matches(cluster, args.size_gb):
            log(f"reusing the kept database {DATABASE} ({database_marker(args.size_gb)})")
        else:
            log(f"generating database {DATABASE} of about {args.size_gb:g} GB ...")
            generate(cluster, db_env, args.size_gb)
        db = describe_database(db_env)
        size = db["size"]
        rows = sum(t["rows"] for t in db["tables"].values())
        log(
            f"database {DATABASE}: {size / GB:.2f} GB, {len(db['tables'])} tables, {rows:,} rows; "
            f"PostgreSQL {server_version}; {pg_dump_version}"
        )
        log(
            "note: the OS page cache cannot be dropped here; the database fits in RAM "
            f"({os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GB:.0f} GB), so every scenario reads "
            "it from the cache; the order rotates over the rounds to spread what remains of cache effects"
        )

        run = {
            "bare": lambda rnd: bare_dump(cluster, db_env),
            "bare_directory": lambda rnd: bare_dump(cluster, db_env, directory_jobs=args.jobs),
            "custom": lambda rnd: module_snapshot(db_env, f"custom-{rnd}", password, str(cluster.bindir), {}),
            "directory": lambda rnd: module_snapshot(
                db_env, f"directory-{rnd}", password, str(cluster.bindir), {"format": "directory", "jobs": args.jobs}
            ),
        }
        for rnd in range(args.rounds):
            shift = rnd % len(scenarios)
            order = scenarios[shift:] + scenarios[:shift]
            results = {}
            for scenario in order:
                attempts = []
                for attempt in range(1 + args.retries):
                    busy, waited = wait_for_quiet(args.quiet_wait)
                    with ForeignCpu(cluster) as foreign:
                        r = run[scenario](rnd + 1)
                    r.update(
                        cpu_busy_before=round(busy, 2),
                        quiet_wait_seconds=round(waited, 1),
                        foreign_cpu_seconds=round(foreign.seconds, 1),
                        foreign_cpu_share=round(foreign.share, 3),
                        noisy=busy > QUIET_BUSY or foreign.share > FOREIGN_MAX,
                    )
                    attempts.append(r)
                    if not r["noisy"] or not r["ok"]:
                        break
                    start = f", {busy:.0%} busy at the start" if busy > QUIET_BUSY else ""
                    log(
                        f"  round {rnd + 1} {scenario:<14} {r['seconds']:7.2f}s — noisy (other jobs used "
                        f"{foreign.share:.0%} of the CPUs{start})" + (": again" if attempt < args.retries else "")
                    )
                r = min(attempts, key=lambda a: (a["noisy"], a["foreign_cpu_share"]))
                r["attempts"] = len(attempts)
                if r["noisy"]:
                    noisy.append(f"round {rnd + 1} {scenario}")
                results[scenario] = r
                line = f"  round {rnd + 1} {scenario:<14} {r['seconds']:7.2f}s"
                if "dump_seconds" in r:
                    dump, verify = r["dump_seconds"], r["verify_seconds"]
                    line += (
                        f" whole module; dump {dump if dump is None else round(dump, 2)}s, "
                        f"verification {verify if verify is None else round(verify, 2)}s ({r['phase_source']})"
                    )
                    other = {k: v for k, v in (r["result"].get("timings") or {}).items() if k in ("facts", "publish")}
                    if other:
                        line += ", other phases " + ", ".join(f"{k} {v}s" for k, v in other.items())
                line += f", archive {r['archive_bytes'] / MB:,.0f} MB"
                if r["noisy"]:
                    line += f" (noisy: other jobs used {r['foreign_cpu_share']:.0%} of the CPUs)"
                if not r["ok"]:
                    line += " — FAILED"
                log(line)
            rounds.append({"order": order, **results})
    finally:
        shutil.rmtree(OUT, ignore_errors=True)
        if args.keep:
            cluster.stop()
            log(f"kept: cluster {cluster.base} (stopped; the next run restarts and reuses it)")
        else:
            cluster.destroy()

    for rnd, results in enumerate(rounds, 1):
        for scenario in scenarios:
            r = results[scenario]
            if not r["ok"]:
                failed.add(scenario)
            if r.get("password_leaked"):
                invalid.append(f"round {rnd} ({scenario}): the password appears in the module's output")
            elif not r["ok"]:
                detail = r.get("error") or r.get("stderr") or r.get("output_tail") or ""
                invalid.append(f"round {rnd} ({scenario}) failed: {detail}")

    def med(scenario: str, key: str) -> float | None:
        return median([results[scenario].get(key) for results in rounds]) if scenario in scenarios else None

    bare = med("bare", "seconds")
    summary: dict = {}
    for scenario in scenarios:
        summary[scenario] = {
            "seconds": med(scenario, "seconds"),
            "dump_seconds": med(scenario, "dump_seconds") if scenario in ("custom", "directory") else None,
            "verify_seconds": med(scenario, "verify_seconds"),
            "archive_bytes": med(scenario, "archive_bytes"),
        }
        dump = summary[scenario]["dump_seconds"] or summary[scenario]["seconds"]
        summary[scenario]["mb_per_s"] = size / MB / dump if dump else None
        summary[scenario]["ratio_to_bare"] = bare / dump if bare and dump else None
        key = "dump_seconds" if scenario in ("custom", "directory") else "seconds"
        best = [results[scenario].get(key) for results in rounds if results[scenario].get(key)]
        summary[scenario]["best_seconds"] = min(best) if best else None
        if scenario in ("custom", "directory"):
            # the same ratio per round (bare and ours back to back), less sensitive to load drifting
            summary[scenario]["paired_ratio_median"] = median(
                [
                    results["bare"]["seconds"] / results[scenario]["dump_seconds"]
                    for results in rounds
                    if results[scenario].get("dump_seconds")
                ]
            )
    labels = {
        "bare": "(1) bare pg_dump -Fc",
        "bare_directory": f"    bare pg_dump -Fd --jobs={args.jobs} (reference)",
        "custom": "(2) pg_snapshot, custom format",
        "directory": f"(3) pg_snapshot, directory, jobs={args.jobs}",
    }
    source = {rounds[0][s]["phase_source"] for s in ("custom", "directory") if s in scenarios} if rounds else set()
    log()
    log(
        f"snapshot — database {size / GB:.2f} GB ({size:,} bytes), {args.rounds} round(s), medians; "
        f"PostgreSQL {server_version}; MB = 10^6 bytes"
    )
    header = f"{'scenario':<46} {'dump':>9} {'MB/s':>7} {'vs bare':>8} {'verify':>8} {'whole':>8} {'archive':>10}"
    log(header)
    log("-" * len(header))
    for scenario in scenarios:
        s = summary[scenario]
        dump = s["dump_seconds"] or s["seconds"]
        verify = f"{s['verify_seconds']:.2f}s" if s["verify_seconds"] is not None else "-"
        whole = f"{s['seconds']:.2f}s" if s["dump_seconds"] is not None else "-"
        ratio = f"{s['ratio_to_bare']:.2f}x" if s["ratio_to_bare"] else "-"
        mbps = f"{s['mb_per_s']:.1f}" if s["mb_per_s"] else "-"
        log(
            f"{labels[scenario]:<46} {dump:>8.2f}s {mbps:>7} {ratio:>8} {verify:>8} {whole:>8} "
            + (f"{s['archive_bytes'] / MB:>7,.0f} MB" if s["archive_bytes"] else f"{'-':>10}")
        )
    log(
        "(dump: the dump phase of pg_snapshot, from "
        + (" and ".join(sorted(source)) or "-")
        + "; vs bare: bare seconds / dump seconds, above 1 is faster; whole: the ansible command, start to end)"
    )

    best_bare = summary["bare"]["best_seconds"]
    best = [
        f"{labels[s].split(',', 1)[-1].strip()} {best_bare / summary[s]['best_seconds']:.2f}x"
        for s in scenarios
        if s != "bare" and best_bare and summary[s]["best_seconds"]
    ]
    if best:
        log("best of the rounds against the best bare dump (for reference): " + "; ".join(best))

    goals = {}
    if "custom" in summary:
        goals["custom"] = (summary["custom"]["ratio_to_bare"], GOAL_CUSTOM, ">=")
    if "directory" in summary:
        goals["directory"] = (summary["directory"]["ratio_to_bare"], GOAL_DIRECTORY, ">")
    met_all = True
    for scenario, (ratio, goal, op) in goals.items():
        what = (
            f"pg_snapshot custom dump phase {op} {goal:g}x the bare dump's throughput"
            if scenario == "custom"
            else f"pg_snapshot directory+{args.jobs} jobs dump phase faster than the bare dump (ratio {op} {goal:g})"
        )
        if ratio is None or {"bare", scenario} & failed:
            log(f"GOAL {what}: not judged (a dump failed)")
            met = None
        else:
            met = ratio >= goal if op == ">=" else ratio > goal
            log(f"GOAL {what}: {ratio:.2f}x — " + ("goal met" if met else "goal NOT met"))
        met_all = met_all and bool(met)
        summary[scenario]["goal"] = {"op": op, "ratio": goal, "met": met}
    if missing:
        met_all = False
        log(f"GOAL pg_snapshot directory+{args.jobs} jobs faster than the bare dump: not judged (not run)")
    if noisy:
        log(
            f"warning: {len(noisy)} of {len(scenarios) * len(rounds)} measurements stayed noisy after "
            f"{args.retries} retries ({', '.join(noisy)}): other jobs used over {FOREIGN_MAX:.0%} of the CPUs "
            f"during them, or kept them over {QUIET_BUSY:.0%} busy for --quiet-wait {args.quiet_wait:g}s before; "
            "the figures are not reliable; run again on a quiet machine"
        )
    for line in invalid:
        log(f"INVALID {line}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
                "postgresql": server_version,
                "pg_dump": pg_dump_version,
                "settings": {"size_gb": args.size_gb, "rounds": args.rounds, "jobs": args.jobs},
                "database": db,
                "rounds": rounds,
                "summary": summary,
                "all_goals_met": met_all and not invalid,
                "invalid": invalid,
                "noisy_measurements": noisy,
                "total_seconds": round(time.perf_counter() - total_started, 1),
            },
            indent=2,
            sort_keys=True,
            default=str,
        )
        + "\n"
    )
    log(f"results: {RESULTS.relative_to(REPO)}; the benchmark took {time.perf_counter() - total_started:.0f}s")
    if invalid:
        return 2
    return 0 if met_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
