"""rolling_under_load: failed requests and latency while the fleet changes release under steady load.

One command (from the repository root)::

    .venv/bin/python benchmarks/rolling_under_load/run.py [--rate 100] [--requests 10000] [--keep]
                                                          [-e release_drain_seconds=3 ...]

It builds its own sandbox fleet (devtools/sandbox.py: PostgreSQL, three gunicorn hosts on
127.0.0.11-13, nginx on 127.0.0.1) under ``--dir`` (default /tmp/safedeploy-bench-rolling, ports
19080 / 19000, away from ``make demo`` and the tests), deploys release 1.0.0 (not measured), then
runs three measurements with the same load (devtools/loadgen.py through nginx: 70 % GET /products/,
10 % GET /healthz, 20 % POST /orders/ that insert an order; nginx never retries those on another
upstream), each with at least ``--requests`` requests at ``--rate`` requests/s:

1. baseline: no deploy at all;
2. ours:     ``ansible-playbook playbooks/deploy.yml`` deploys 2.0.0 (five migrations) with the
             sandbox's inventory: stage, migrate once, then host by host drain / switch / restart /
             prove healthy / undrain. The load starts before the playbook and runs until both
             ``--requests`` were sent and the playbook ended ``--tail`` seconds ago;
3. naive:    release 2.0.1 (release 2's code, re-versioned, no migration) is staged on every host
             beforehand (the playbook's preflight + stage tags, not measured); under load, every
             host's ``current`` is switched to it and all three gunicorns are restarted at once
             (devtools/appctl.py restart, three in parallel), no drain.

Printed for each run: requests, failed (non-2xx + connection errors; reads and writes apart), the
longest time without a successful answer, latency p50 / p99 / max (whole run and, for ours and naive,
during the deploy / restart window only); then ours p99 / baseline p99 and the goals: 0 failed
requests for ours, and ours' p99 during the deploy <= 2x the baseline p99. For every failed request
and the slowest ones of ours, what the playbook was doing at that moment (ansible's output lines are
time-stamped against the load's clock). Exit status 1 when a goal is missed, 2 when the run is
invalid (a deploy failed). Results, the time-stamped ansible logs and every request go to
.build/bench/rolling_under_load/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from devtools import build_release  # noqa: E402
from devtools.loadgen import LoadGenerator, percentile  # noqa: E402
from devtools.playbook import COLLECTIONS, link_collection  # noqa: E402
from devtools.sandbox import HOSTS, Sandbox  # noqa: E402

BUILD = REPO / ".build" / "bench" / "rolling_under_load"
RESULTS = BUILD / "results.json"
DEFAULT_DIR = Path("/tmp/safedeploy-bench-rolling")
FIRST, OURS, NAIVE = "1.0.0", "2.0.0", "2.0.1"
GOAL_P99_FACTOR = 2.0
CONCURRENCY = 64  # in flight at most: enough that a stalled host does not slow the schedule
REQUEST_TIMEOUT = 10.0
DEPLOY_TIMEOUT = 420.0  # seconds: the playbook is killed after this (the run is then invalid)
RESTART_TIMEOUT = 120.0
WARMUP_SECONDS = 3.0
READS = ("GET /products/", "GET /healthz")
WRITES = ("POST /orders/",)
# ansible's default callback: "TASK [role : name] ****", "changed: [app1 -> localhost]", "fatal: [app2]: ..."
TASK_LINE = re.compile(r"^TASK \[(?:[^:\]]+ : )?(?P<task>.*)\] \**$")
PLAY_LINE = re.compile(r"^PLAY \[(?P<play>.*)\] \**$")
RESULT_LINE = re.compile(r"^(?P<status>ok|changed|skipping|fatal|failed|included): \[(?P<host>[^\]\s]+)")


BEGAN = time.monotonic()
AFTER_UNDRAIN = 2.0  # seconds after a host is back in nginx whose requests are shown apart (cold workers)
UNDRAIN_TASK = re.compile(r"takes requests again|undrain|back into the load balancer", re.IGNORECASE)


def log(message: str = "") -> None:
    print(f"[{time.monotonic() - BEGAN:5.0f}s] {message}" if message else "", flush=True)


def port_free(port: int, *addresses: str) -> bool:
    for address in addresses:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # as nginx and gunicorn do: connections of an earlier run in TIME_WAIT do not block the port
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                return False
    return True


# -- ansible-playbook with a clock ----------------------------------------------------------------
class Playbook:
    """ansible-playbook in its own process group; every output line stamped with seconds since ``t0``."""

    def __init__(self, sandbox: Sandbox, version: str, t0: float, *, tags: str | None = None,
                 extra: dict | None = None, name: str | None = None):
        self.t0 = t0
        self.lines: list[tuple[float, str]] = []
        self.rc: int | None = None
        self.started_s = self.finished_s = None
        self.log_path = BUILD / f"ansible-{name or version}.log"
        bindir = Path(sys.executable).parent
        extra_vars = {
            "release_version": version,
            "release_artifact": str(sandbox.artifacts / f"shop-{version}.tar.gz"),
            "release_report_dir": str(sandbox.base / "reports"),
            **(extra or {}),
        }
        self.argv = [str(bindir / "ansible-playbook"), "-i", str(sandbox.inventory_dir / "hosts.ini"),
                     str(REPO / "playbooks" / "deploy.yml"), "-e", json.dumps(extra_vars)]
        if tags:
            self.argv += ["--tags", tags]
        self.env = dict(os.environ)
        self.env.update(ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
                        ANSIBLE_RETRY_FILES_ENABLED="0", PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
        self.proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> Playbook:
        link_collection()
        self.started_s = self.now()
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     start_new_session=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append((self.now(), line.rstrip("\n")))
        self.rc = self.proc.wait()
        self.finished_s = self.now()

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def wait(self, timeout: float) -> int:
        assert self._thread
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.kill()
            self._thread.join(30)
            raise RuntimeError(f"ansible-playbook did not finish within {timeout:.0f}s (killed); see {self.log_path}")
        self.write_log()
        return self.rc if self.rc is not None else -1

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)

    def write_log(self) -> None:
        BUILD.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("".join(f"{at:9.3f}s  {line}\n" for at, line in self.lines))

    def tail(self, lines: int = 40) -> str:
        return "\n".join(line for _at, line in self.lines[-lines:])

    def plays(self) -> list[tuple[str, float, float]]:
        """(play, began, ended) in seconds since ``t0``; a play ends where the next begins (or the playbook)."""
        starts = [(m["play"], at) for at, line in self.lines if (m := PLAY_LINE.match(line))]
        end = self.finished_s if self.finished_s is not None else self.now()
        return [(play, at, starts[i + 1][1] if i + 1 < len(starts) else end) for i, (play, at) in enumerate(starts)]

    def events(self) -> list[dict]:
        """One entry per task result: task, host, status, started_s (task header), finished_s (result line)."""
        events, task, task_at, play = [], None, None, None
        for at, line in self.lines:
            if match := PLAY_LINE.match(line):
                play = match["play"]
            elif match := TASK_LINE.match(line):
                task, task_at = match["task"], at
            elif (match := RESULT_LINE.match(line)) and task:
                if match["status"] in ("skipping", "included"):
                    continue
                events.append({"play": play, "task": task, "host": match["host"], "status": match["status"],
                               "started_s": round(task_at, 3), "finished_s": round(at, 3)})
        return events


def activity_at(events: list[dict], at: float) -> str:
    """What the playbook was doing at ``at``: the task(s) whose header came last before it."""
    current = [e for e in events if e["started_s"] <= at]
    if not current:
        return "before the first task"
    last = current[-1]
    same = [e for e in current if e["task"] == last["task"] and e["started_s"] == last["started_s"]]
    hosts = ",".join(sorted({e["host"] for e in same}))
    state = "running" if at < last["finished_s"] else f"ended {at - last['finished_s']:.2f}s before"
    return f"{last['task']} [{hosts}] ({state}; task began {at - last['started_s']:.2f}s before)"


# -- the fleet --------------------------------------------------------------------------------
def deploy(sandbox: Sandbox, version: str, **kwargs) -> Playbook:
    book = Playbook(sandbox, version, time.monotonic(), **kwargs).start()
    rc = book.wait(DEPLOY_TIMEOUT)
    if rc != 0:
        raise BenchInvalid(f"deploy of {version} failed (rc={rc}); see {book.log_path}:\n{book.tail()}")
    return book


def switch_and_restart_all(sandbox: Sandbox, version: str, t0: float) -> dict:
    """The naive way: every host's current -> releases/<version>, then appctl restart on all three at once."""
    started = time.monotonic() - t0
    for name, _address in HOSTS:
        root = sandbox.hosts_dir / name
        tmp = root / ".current.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(root / "releases" / version)
        os.replace(tmp, root / "current")
    procs = {}
    for name, address in HOSTS:
        argv = [sandbox.python, str(REPO / "devtools" / "appctl.py"), "--root", str(sandbox.hosts_dir / name),
                "--bind", f"{address}:{sandbox.app_port}", "restart"]
        procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, start_new_session=True)
    hosts = {}
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=RESTART_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        hosts[name] = {"rc": proc.returncode, "finished_s": round(time.monotonic() - t0, 3),
                       "output": out.strip()}
    return {"started_s": round(started, 3), "finished_s": round(time.monotonic() - t0, 3), "hosts": hosts}


class BenchInvalid(Exception):
    pass


def keep_logs(sandbox: Sandbox) -> None:
    """nginx's access log (upstream, status and times of every request) and each gunicorn's logs, for diagnosis."""
    target = BUILD / "logs"
    shutil.rmtree(target, ignore_errors=True)
    sources = [sandbox.nginx_dir / "logs" / "access.log", sandbox.nginx_dir / "logs" / "error.log"]
    sources += [sandbox.hosts_dir / name / "run" / f for name, _a in HOSTS for f in ("gunicorn.log", "access.log")]
    for source in sources:
        if source.exists():
            dest = target / source.relative_to(sandbox.base)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copyfile(source, dest)


# -- load and figures -------------------------------------------------------------------------
def new_load(sandbox: Sandbox, rate: float, duration: float, max_requests: int, seed: int) -> LoadGenerator:
    return LoadGenerator(f"http://127.0.0.1:{sandbox.lb_port}", rate=rate, duration=duration,
                         max_requests=max_requests, concurrency=CONCURRENCY, timeout=REQUEST_TIMEOUT, seed=seed)


def window_figures(records: list[dict], start: float | None, end: float | None) -> dict:
    """Latency and failures of the requests that began inside [start, end] (seconds since the load began)."""
    chosen = [r for r in records
              if (start is None or r["started_s"] >= start) and (end is None or r["started_s"] <= end)]
    latencies = sorted(r["finished_s"] - r["started_s"] for r in chosen if r["status"] is not None)

    def ms(value):
        return None if value is None else round(value * 1000, 1)

    return {
        "from_s": None if start is None else round(start, 3), "to_s": None if end is None else round(end, 3),
        "requests": len(chosen), "failed": sum(1 for r in chosen if not r["ok"]),
        "p50_ms": ms(percentile(latencies, 0.5)), "p99_ms": ms(percentile(latencies, 0.99)),
        "max_ms": ms(latencies[-1] if latencies else None),
    }


def figures(name: str, summary: dict, records: list[dict], window: tuple[float, float] | None,
            events: list[dict] | None = None) -> dict:
    per = summary["by_endpoint"]

    def failed(endpoints):
        return sum(per.get(e, {}).get("non_2xx", 0) + per.get(e, {}).get("connection_errors", 0) for e in endpoints)

    def total(endpoints):
        return sum(per.get(e, {}).get("total", 0) for e in endpoints)

    failures = [r for r in records if not r["ok"]]
    result = {
        "run": name,
        "requests": summary["total"], "reads": total(READS), "writes": total(WRITES),
        "failed": summary["failed"], "failed_reads": failed(READS), "failed_writes": failed(WRITES),
        "non_2xx_by_status": summary["non_2xx_by_status"],
        "connection_errors_by_kind": summary["connection_errors_by_kind"],
        "longest_gap_without_success_s": summary["longest_gap_without_success_s"],
        "longest_gap_began_at_s": summary["longest_gap_began_at_s"],
        "p50_ms": summary["latency_ms"]["p50"], "p99_ms": summary["latency_ms"]["p99"],
        "max_ms": summary["latency_ms"]["max"],
        "rate_achieved": summary["rate_achieved"], "late": summary["late"], "elapsed_s": summary["elapsed_s"],
        "versions": summary["versions"],
        "window": window_figures(records, *window) if window else None,
        "first_failure_s": round(failures[0]["started_s"], 3) if failures else None,
        "last_failure_s": round(max(r["started_s"] for r in failures), 3) if failures else None,
    }
    detail = sorted(failures, key=lambda r: r["started_s"])[:50]
    slowest = sorted((r for r in records if r["status"] is not None),
                     key=lambda r: r["finished_s"] - r["started_s"], reverse=True)[:15]
    if events is not None:
        for r in detail + slowest:
            r["during"] = activity_at(events, r["started_s"])
    result["failures"] = detail
    result["slowest"] = [dict(r, latency_ms=round((r["finished_s"] - r["started_s"]) * 1000, 1)) for r in slowest]
    return result


def run_load_until(load: LoadGenerator, need: int, finished, tail: float, limit: float) -> dict:
    """Keep ``load`` going until ``need`` requests were sent and ``finished()`` has been true for ``tail`` s."""
    done_at = None
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and load.running:
        if done_at is None and finished():
            done_at = time.monotonic()
        if done_at is not None and time.monotonic() - done_at >= tail and load.summary()["dispatched"] >= need:
            break
        time.sleep(0.1)
    return load.stop()


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def measure_baseline(sandbox, args) -> tuple[dict, list[dict]]:
    duration = args.requests / args.rate
    load = new_load(sandbox, args.rate, duration + 30, args.requests, seed=1)
    log(f"baseline: {args.requests} requests at {args.rate:g}/s, no deploy (~{duration:.0f}s)")
    load.start()
    if not load.wait(duration + 60):
        load.stop()
    summary = load.summary()
    return summary, load.records()


def measure_ours(sandbox, args) -> tuple[dict, list[dict], Playbook]:
    limit = DEPLOY_TIMEOUT + args.requests / args.rate + args.tail + 30
    load = new_load(sandbox, args.rate, limit, int(args.rate * limit), seed=2)
    log(f"ours: ansible-playbook playbooks/deploy.yml -e release_version={OURS} under load at {args.rate:g}/s "
        f"(>= {args.requests} requests, until {args.tail:g}s after the playbook ends)")
    load.start()
    t0 = time.monotonic()
    book = Playbook(sandbox, OURS, t0, extra=args.extra, name=f"{OURS}-ours")
    try:
        time.sleep(args.lead)
        book.start()
        summary = run_load_until(load, args.requests, lambda: book.done, args.tail, limit)
    finally:
        if load.running:
            load.stop()
        book.kill()
    rc = book.wait(30)
    log(f"ours: playbook rc={rc} from {book.started_s:.1f}s to {book.finished_s:.1f}s of the load "
        f"(log {book.log_path})")
    if rc != 0:
        raise BenchInvalid(f"the deploy of {OURS} failed (rc={rc}); see {book.log_path}:\n{book.tail()}")
    return summary, load.records(), book


def measure_naive(sandbox, args) -> tuple[dict, list[dict], dict]:
    limit = args.requests / args.rate + RESTART_TIMEOUT + args.tail + 30
    load = new_load(sandbox, args.rate, limit, int(args.rate * limit), seed=3)
    log(f"naive: under load at {args.rate:g}/s, switch every host to {NAIVE} and restart all three gunicorns "
        f"at once after {args.lead:g}s (>= {args.requests} requests)")
    load.start()
    t0 = time.monotonic()
    outcome: dict = {}

    def restart():
        time.sleep(args.lead)
        outcome.update(switch_and_restart_all(sandbox, NAIVE, t0))

    worker = threading.Thread(target=restart, daemon=True)
    worker.start()
    try:
        summary = run_load_until(load, args.requests, lambda: not worker.is_alive(), args.tail, limit)
    finally:
        if load.running:
            load.stop()
    worker.join(RESTART_TIMEOUT)
    failed_hosts = {n: h for n, h in outcome.get("hosts", {}).items() if h["rc"] != 0}
    if not outcome or failed_hosts:
        raise BenchInvalid(f"the naive restart failed: {json.dumps(outcome or 'did not finish', indent=2)}")
    log(f"naive: restart of all three from {outcome['started_s']:.1f}s to {outcome['finished_s']:.1f}s of the load")
    return summary, load.records(), outcome


# -- report -----------------------------------------------------------------------------------
def out(message: str = "") -> None:
    print(message, flush=True)


def fmt(value, unit="", digits=1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def print_table(runs: list[dict]) -> None:
    out(f"{'':<9} {'':>8} {'failed':>16} {'':>7} {'whole run (ms)':^26}   {'deploy/restart window (ms)':^43}")
    header = (f"{'run':<9} {'requests':>8} {'all (read/write)':>16} {'gap s':>7} "
              f"{'p50':>8} {'p99':>8} {'max':>8}   {'requests':>8} {'failed':>7} {'p50':>8} {'p99':>8} {'max':>8}")
    out(header)
    out("-" * len(header))
    for r in runs:
        w = r["window"] or {}
        window = (f"{fmt(w.get('requests')):>8} {fmt(w.get('failed')):>7} {fmt(w.get('p50_ms')):>8} "
                  f"{fmt(w.get('p99_ms')):>8} {fmt(w.get('max_ms')):>8}") if w else f"{'(no deploy)':>8}"
        failed = f"{r['failed']} ({r['failed_reads']}/{r['failed_writes']})"
        out(f"{r['run']:<9} {r['requests']:>8} {failed:>16} {fmt(r['longest_gap_without_success_s'], digits=3):>7} "
            f"{fmt(r['p50_ms']):>8} {fmt(r['p99_ms']):>8} {fmt(r['max_ms']):>8}   {window}")


def print_phases(phases: list[dict]) -> None:
    out("ours, by phase (requests begun while it ran):")
    for p in phases:
        out(f"    {p['phase']:<38} {p['from_s']:7.1f}s-{p['to_s']:6.1f}s {p['requests']:>6} req "
            f"{p['failed']:>4} failed  p50 {fmt(p['p50_ms']):>6} p99 {fmt(p['p99_ms']):>7} "
            f"max {fmt(p['max_ms']):>7} ms")


def print_details(r: dict) -> None:
    w = r["window"]
    where = f"window {w['from_s']:.1f}s-{w['to_s']:.1f}s of {r['elapsed_s']:.1f}s" if w else f"{r['elapsed_s']:.1f}s"
    out(f"{r['run']}: {where}; reads {r['reads']} writes {r['writes']}; achieved {r['rate_achieved']}/s, "
        f"late {r['late']}; versions {r['versions']}; load average {r.get('loadavg_1min_before_after')}")
    if r["failed"]:
        out(f"  failures: statuses {r['non_2xx_by_status']} connection errors {r['connection_errors_by_kind']}, "
            f"first at {r['first_failure_s']}s, last at {r['last_failure_s']}s; longest gap without success "
            f"{r['longest_gap_without_success_s']}s from {r['longest_gap_began_at_s']}s")
        for f in r["failures"][:12]:
            during = f"  during: {f['during']}" if "during" in f else ""
            out(f"    {f['started_s']:8.3f}s {f['endpoint']:<15} {f['status'] or f['error']}{during}")
        if len(r["failures"]) > 12:
            out(f"    ... {r['failed'] - 12} more (all in {RESULTS})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (100)")
    parser.add_argument("--requests", type=int, default=10_000, help="requests per run at least (10000)")
    parser.add_argument("--tail", type=float, default=5.0,
                        help="seconds of load after the deploy / restart ended (5)")
    parser.add_argument("--lead", type=float, default=5.0,
                        help="seconds of load before the deploy / restart begins (5)")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"sandbox directory ({DEFAULT_DIR})")
    parser.add_argument("--lb-port", type=int, default=19080, help="nginx port on 127.0.0.1 (19080)")
    parser.add_argument("--app-port", type=int, default=19000, help="gunicorn port on 127.0.0.11-13 (19000)")
    parser.add_argument("-e", "--extra", action="append", default=[], metavar="VAR=VALUE",
                        help="extra variable for the measured deploy (ours), e.g. release_drain_seconds=3")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox up (stop it: "
                        "python -m devtools.sandbox down --purge --dir DIR)")
    args = parser.parse_args(argv)
    if args.requests < 1 or not 0 < args.rate <= 1000:
        parser.error("--requests must be >= 1 and --rate in (0, 1000]")
    extra = {}
    for item in args.extra:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"-e {item!r}: expected VAR=VALUE")
        with contextlib.suppress(ValueError):
            value = json.loads(value)
        extra[key] = value
    args.extra = extra

    if not (COLLECTIONS / "ansible_collections" / "safedeploy" / "django").exists():
        link_collection()
    BUILD.mkdir(parents=True, exist_ok=True)
    base = args.dir.absolute()
    if base.exists() and any(base.iterdir()) and not (base / "sandbox.json").exists():
        sys.exit(f"{base} exists and is not a sandbox of ours: choose another --dir")
    if base.exists():
        log(f"removing the previous benchmark sandbox {base}")
        Sandbox(base).down(purge=True, log=lambda *_: None)
    if not port_free(args.lb_port, "127.0.0.1"):
        sys.exit(f"port {args.lb_port} is busy on 127.0.0.1: choose another --lb-port")
    if not port_free(args.app_port, *(address for _n, address in HOSTS)):
        sys.exit(f"port {args.app_port} is busy on 127.0.0.11-13: choose another --app-port")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    sandbox = Sandbox(base, lb_port=args.lb_port, app_port=args.app_port)
    results: dict = {"rate": args.rate, "requests_per_run": args.requests, "extra_vars": args.extra,
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "platform": platform.platform()}}
    interrupted = False
    loads: dict[str, tuple[float, float]] = {}
    try:
        log(f"sandbox: {base} (nginx 127.0.0.1:{args.lb_port}, gunicorn 127.0.0.11-13:{args.app_port})")
        sandbox.up(log=lambda line: log(f"  {line}"))
        build_release.build(2, NAIVE, sandbox.artifacts / f"shop-{NAIVE}.tar.gz")
        log(f"deploying {FIRST} (not measured)")
        deploy(sandbox, FIRST, name=f"{FIRST}-initial")
        log(f"{FIRST} serves on every host: {sandbox.served_versions()}")
        warm = new_load(sandbox, args.rate, WARMUP_SECONDS, int(args.rate * WARMUP_SECONDS), seed=0)
        warm.run()  # every worker has imported Django and opened its connection before we measure

        load_before = loadavg()
        base_summary, base_records = measure_baseline(sandbox, args)
        loads["baseline"] = (load_before, loadavg())
        baseline = figures("baseline", base_summary, base_records, None)

        load_before = loadavg()
        ours_summary, ours_records, book = measure_ours(sandbox, args)
        loads["ours"] = (load_before, loadavg())
        events = book.events()
        rollout = [e for e in events if e["task"].startswith("Rollout")]
        ours = figures("ours", ours_summary, ours_records, (book.started_s, book.finished_s), events)
        ours["rollout_window"] = (window_figures(ours_records, rollout[0]["started_s"], rollout[-1]["finished_s"])
                                  if rollout else None)
        ours["phases"] = [dict(window_figures(ours_records, began, ended), phase=play)
                          for play, began, ended in book.plays()]
        for name, _address in HOSTS:
            mine = [e for e in rollout if e["host"] == name]
            if mine:
                ours["phases"].append(dict(window_figures(ours_records, mine[0]["started_s"], mine[-1]["finished_s"]),
                                           phase=f"rollout of {name}"))
            back = [e for e in mine if UNDRAIN_TASK.search(e["task"]) and e["status"] in ("ok", "changed")]
            if back:
                at = back[-1]["finished_s"]
                ours["phases"].append(dict(window_figures(ours_records, at, at + AFTER_UNDRAIN),
                                           phase=f"{AFTER_UNDRAIN:g}s after {name} is back in nginx"))
        ours["playbook"] = {"started_s": book.started_s, "finished_s": book.finished_s,
                            "log": str(book.log_path), "rollout_events": rollout}

        log(f"staging {NAIVE} on every host for the naive run (not measured)")
        deploy(sandbox, NAIVE, tags="preflight,stage", name=f"{NAIVE}-stage")
        load_before = loadavg()
        naive_summary, naive_records, outcome = measure_naive(sandbox, args)
        loads["naive"] = (load_before, loadavg())
        naive = figures("naive", naive_summary, naive_records, (outcome["started_s"], outcome["finished_s"]))
        naive["restart"] = outcome
        results["runs"] = {"baseline": baseline, "ours": ours, "naive": naive}
        for name, run in results["runs"].items():
            run["loadavg_1min_before_after"] = loads[name]
        for name, records in (("baseline", base_records), ("ours", ours_records), ("naive", naive_records)):
            (BUILD / f"requests-{name}.json").write_text(json.dumps(records))
        log("figures computed")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: tearing down")
    except BenchInvalid as exc:
        log(f"INVALID RUN: {exc}")
        results["invalid"] = str(exc)
    finally:
        keep_logs(sandbox)
        if args.keep:
            log(f"kept the sandbox: {base} (python -m devtools.sandbox down --purge --dir {shlex.quote(str(base))})")
        else:
            log("stopping and removing the sandbox")
            sandbox.stop_nginx()
            sandbox.down(purge=True, log=lambda *_: None)
            log(f"sandbox {base} stopped and removed")
    if interrupted:
        return 130
    results["wall_s"] = round(time.monotonic() - started, 1)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if "invalid" in results:
        return 2

    baseline, ours, naive = (results["runs"][k] for k in ("baseline", "ours", "naive"))
    ours_p99 = ours["window"]["p99_ms"]
    ratio = ours_p99 / baseline["p99_ms"] if baseline["p99_ms"] else None
    ratio_whole = ours["p99_ms"] / baseline["p99_ms"] if baseline["p99_ms"] else None
    zero_failed = ours["failed"] == 0
    p99_met = ratio is not None and ratio <= GOAL_P99_FACTOR
    results["goals"] = {"ours_failed": ours["failed"], "ours_zero_failed": zero_failed,
                        "ours_p99_during_deploy_ms": ours_p99, "baseline_p99_ms": baseline["p99_ms"],
                        "ratio_p99_during_deploy": None if ratio is None else round(ratio, 2),
                        "ratio_p99_whole_run": None if ratio_whole is None else round(ratio_whole, 2),
                        "p99_met": p99_met}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")

    out()
    out(f"rolling_under_load — {args.rate:g} req/s, >= {args.requests} requests per run, mix 70% GET /products/, "
        f"10% GET /healthz, 20% POST /orders/; {os.cpu_count()} CPUs; wall time {results['wall_s']:.0f}s")
    out("failed = non-2xx + connection errors (reads = GETs, writes = POSTs); gap = longest time without a "
        "successful answer; window = requests begun while the playbook (ours) / the restart (naive) ran")
    out()
    print_table([baseline, ours, naive])
    out()
    print_phases(ours["phases"])
    out()
    for r in (baseline, ours, naive):
        print_details(r)
    if ours["slowest"]:
        out("ours: slowest requests")
        for s in ours["slowest"][:8]:
            out(f"    {s['started_s']:8.3f}s {s['endpoint']:<15} {s['latency_ms']:8.1f} ms  during: {s['during']}")
    out()
    out(f"ours p99 during the deploy / baseline p99: {fmt(ours_p99)} / {fmt(baseline['p99_ms'])} ms = "
        f"{fmt(ratio, 'x', 2)} (goal <= {GOAL_P99_FACTOR:g}x: {'MET' if p99_met else 'MISSED'}); "
        f"whole run {fmt(ratio_whole, 'x', 2)}")
    out(f"ours failed requests: {ours['failed']} (goal 0: {'MET' if zero_failed else 'MISSED'}); "
        f"naive failed {naive['failed']} ({naive['failed_reads']} reads, {naive['failed_writes']} writes), "
        f"gap {naive['longest_gap_without_success_s']}s")
    out(f"results: {RESULTS}; ansible logs with the load's clock: {BUILD}/ansible-*.log")
    return 0 if zero_failed and p99_met else 1


if __name__ == "__main__":
    sys.exit(main())
