"""Bounded HTTP load on the sandbox shop, counting every failure.

Sends a steady mix of requests to a loopback URL (the sandbox's nginx):
about 70 % ``GET /products/``, 10 % ``GET /healthz`` and 20 % ``POST /orders/``,
at a fixed rate, until the first of: ``--duration`` seconds, ``--max-requests``
requests, the ``--stop-file`` appearing, or SIGINT/SIGTERM. Then it prints and
writes a JSON summary: totals, 2xx, non-2xx by status, connection errors by
kind, latency p50/p99/max, the longest time without a successful answer, the
release versions that answered (``X-Release``) and the first failures in detail.

Command line::

    python -m devtools.loadgen --url http://127.0.0.1:8080 --rate 20 --duration 60 \\
        --max-requests 5000 --stop-file /tmp/stop-load --out load.json

Library (what an end-to-end test runs beside ansible-playbook)::

    load = LoadGenerator("http://127.0.0.1:8080", rate=20, duration=300).start()
    ...                       # deploy
    summary = load.stop()     # stop sending, wait for requests in flight, summary dict
    assert summary["failed"] == 0

Only loopback targets are accepted: this is a test tool, not a benchmark of
somebody else's server.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import math
import os
import random
import signal
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_MIX = (("GET /products/", 70), ("GET /healthz", 10), ("POST /orders/", 20))
# the products release 1 seeds; replaced by what GET /products/ returns when it answers
DEFAULT_SKUS = ("TEA-001", "TEA-002", "CUP-001", "POT-001", "FLT-001")
MAX_RATE = 1000.0
MAX_DURATION = 3600.0
FAILURE_SAMPLES = 20
RECORD_LIMIT = 200_000  # per-request records kept for records() (about 20 MB at most)
LATE_AFTER = 0.1  # seconds behind schedule before a request counts as late


def check_loopback(url: str) -> tuple[str, int, str]:
    """(host, port, base path) of an http:// URL whose host is a loopback address."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--url {url!r} must look like http://127.0.0.1:8080")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {parts.hostname}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_loopback:
            raise ValueError(f"{parts.hostname} resolves to {address}: the load generator only targets loopback")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


class LoadGenerator:
    """Open-loop load at ``rate`` requests/s with at most ``concurrency`` in flight."""

    def __init__(self, url: str = "http://127.0.0.1:8080", *, rate: float = 20.0, duration: float = 30.0,
                 max_requests: int | None = None, stop_file: str | os.PathLike | None = None,
                 concurrency: int = 16, timeout: float = 10.0, mix=DEFAULT_MIX, seed: int | None = None,
                 customers: int = 50):
        self.host, self.port, self.base = check_loopback(url)
        self.url = url
        if not 0 < rate <= MAX_RATE:
            raise ValueError(f"rate must be in (0, {MAX_RATE:g}] requests per second")
        if not 0 < duration <= MAX_DURATION:
            raise ValueError(f"duration must be in (0, {MAX_DURATION:g}] seconds")
        self.rate = float(rate)
        self.duration = float(duration)
        self.max_requests = max_requests if max_requests is not None else math.ceil(rate * duration)
        if self.max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        self.stop_file = Path(stop_file) if stop_file else None
        self.concurrency = max(1, int(concurrency))
        self.timeout = timeout
        self.mix = tuple(mix)
        self.customers = customers
        self._rng = random.Random(seed)
        self._skus = list(DEFAULT_SKUS)

        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at: float | None = None
        self._started_wall: str | None = None
        self._finished_at: float | None = None
        self._stopped_by: str | None = None
        self._dispatched = 0
        self._late = 0
        self._total = 0
        self._ok = 0
        self._status = Counter()
        self._errors = Counter()
        self._versions = Counter()
        self._endpoints: dict[str, Counter] = {}
        self._latencies: list[float] = []
        self._failures: list[dict] = []
        # (started_s, finished_s, endpoint, status, error), seconds since start(); see records()
        self._records: list[tuple[float, float, str, int | None, str | None]] = []
        self._last_ok_at = 0.0  # when the latest successful answer arrived, seconds since start()
        self._longest_gap = (0.0, 0.0)  # (length, began at) of the longest stretch without a success

    # -- control ---------------------------------------------------------
    def start(self) -> LoadGenerator:
        if self._thread:
            raise RuntimeError("already started")
        self._learn_skus()
        self._started_at = time.monotonic()
        self._started_wall = datetime.now(UTC).isoformat(timespec="seconds")
        self._thread = threading.Thread(target=self._dispatch, name="loadgen-dispatch", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a bound is reached and in-flight requests are done; False on timeout."""
        return self._done.wait(timeout)

    def stop(self, timeout: float | None = None) -> dict:
        """Stop sending, wait for the requests in flight, return the summary."""
        if self._thread is None:
            raise RuntimeError("not started")
        with self._lock:
            if self._stopped_by is None:
                self._stopped_by = "stop()"
        self._stop.set()
        self._done.wait(timeout if timeout is not None else self.timeout + 5)
        return self.summary()

    def run(self) -> dict:
        self.start()
        self.wait()
        return self.summary()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the work ----------------------------------------------------------
    def _learn_skus(self) -> None:
        try:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            conn.request("GET", f"{self.base}/products/")
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status == 200:
                skus = [item["sku"] for item in json.loads(body) if isinstance(item, dict) and "sku" in item]
                if skus:
                    self._skus = skus
        except (OSError, http.client.HTTPException, ValueError, TypeError):
            pass  # the target may be down before the first deploy: keep the seeded SKUs

    def _why_stop(self, index: int, elapsed: float) -> str | None:
        if self._stop.is_set():
            return "stop()"
        if elapsed >= self.duration:
            return "duration"
        if index >= self.max_requests:
            return "max_requests"
        if self.stop_file and self.stop_file.exists():
            return "stop_file"
        return None

    def _dispatch(self) -> None:
        slots = threading.BoundedSemaphore(self.concurrency)
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="loadgen")
        names = [name for name, _ in self.mix]
        weights = [weight for _, weight in self.mix]
        index = 0
        reason = None
        try:
            while True:
                due = self._started_at + index / self.rate
                while True:
                    now = time.monotonic()
                    reason = self._why_stop(index, now - self._started_at)
                    if reason or now >= due:
                        break
                    self._stop.wait(min(due - now, 0.2))
                if reason:
                    break
                # all workers busy: wait for one (the schedule slips, counted as late)
                while not slots.acquire(timeout=0.2):
                    reason = self._why_stop(index, time.monotonic() - self._started_at)
                    if reason:
                        break
                if reason:
                    break
                if time.monotonic() - due > LATE_AFTER:
                    self._late += 1
                endpoint = self._rng.choices(names, weights)[0]
                body = self._order_body() if endpoint.startswith("POST") else None
                pool.submit(self._one, endpoint, body, slots)
                index += 1
                self._dispatched = index
        finally:
            pool.shutdown(wait=True)
            with self._lock:
                if self._stopped_by is None:
                    self._stopped_by = reason or "error"
                self._finished_at = time.monotonic()
            self._done.set()

    def _order_body(self) -> bytes:
        items = [
            {"sku": sku, "qty": self._rng.randint(1, 3)}
            for sku in self._rng.sample(self._skus, k=min(len(self._skus), self._rng.randint(1, 3)))
        ]
        customer = f"load{self._rng.randrange(self.customers)}@example.com"
        return json.dumps({"customer": customer, "items": items}).encode()

    def _one(self, endpoint: str, body: bytes | None, slots: threading.BoundedSemaphore) -> None:
        method, path = endpoint.split(" ", 1)
        headers = {"User-Agent": "safedeploy-loadgen", "Connection": "close"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        started = time.monotonic()
        status = error = version = None
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, f"{self.base}{path}", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            status = response.status
            version = response.getheader("X-Release")
        except (OSError, http.client.HTTPException) as exc:
            error = type(exc).__name__
        finally:
            conn.close()
            slots.release()
        elapsed = time.monotonic() - started
        self._record(endpoint, status, error, version, elapsed, started)

    def _gap_until(self, now: float) -> None:
        """Close the stretch without success that runs from the last success up to ``now``."""
        gap = now - self._last_ok_at
        if gap > self._longest_gap[0]:
            self._longest_gap = (gap, self._last_ok_at)

    def _record(self, endpoint, status, error, version, elapsed, started) -> None:
        ok = status is not None and 200 <= status < 300
        with self._lock:
            started_s = started - self._started_at
            finished_s = started_s + elapsed
            if ok:
                self._gap_until(finished_s)
                self._last_ok_at = max(self._last_ok_at, finished_s)
            if len(self._records) < RECORD_LIMIT:
                self._records.append((started_s, finished_s, endpoint, status, error))
            self._total += 1
            per = self._endpoints.setdefault(endpoint, Counter())
            per["total"] += 1
            if error:
                self._errors[error] += 1
                per["connection_errors"] += 1
            else:
                self._latencies.append(elapsed)
                if ok:
                    self._ok += 1
                    per["ok"] += 1
                else:
                    self._status[str(status)] += 1
                    per["non_2xx"] += 1
            if version:
                self._versions[version] += 1
            if not ok and len(self._failures) < FAILURE_SAMPLES:
                self._failures.append({
                    "at_s": round(started - self._started_at, 3),
                    "endpoint": endpoint,
                    "status": status,
                    "error": error,
                })

    # -- results ----------------------------------------------------------
    def records(self) -> list[dict]:
        """Every request so far (the first RECORD_LIMIT), in the order they finished: ``started_s`` and
        ``finished_s`` (seconds since start()), ``endpoint``, ``status`` (None on a connection error),
        ``error`` (the exception's name) and ``ok`` (a 2xx answer)."""
        with self._lock:
            return [{"started_s": started, "finished_s": finished, "endpoint": endpoint, "status": status,
                     "error": error, "ok": status is not None and 200 <= status < 300}
                    for started, finished, endpoint, status, error in self._records]

    def summary(self) -> dict:
        with self._lock:
            end = self._finished_at or time.monotonic()
            elapsed = end - self._started_at if self._started_at else 0.0
            # the stretch since the last success counts too (a run that ends in an outage)
            gap, gap_at = self._longest_gap
            if elapsed - self._last_ok_at > gap:
                gap, gap_at = elapsed - self._last_ok_at, self._last_ok_at
            latencies = sorted(self._latencies)
            non_2xx = sum(self._status.values())
            errors = sum(self._errors.values())

            def ms(value):
                return None if value is None else round(value * 1000, 1)

            return {
                "url": self.url,
                "started_at": self._started_wall,
                "running": self.running,
                "stopped_by": self._stopped_by,
                "elapsed_s": round(elapsed, 2),
                "rate_target": self.rate,
                "rate_achieved": round(self._total / elapsed, 2) if elapsed else 0.0,
                "concurrency": self.concurrency,
                "dispatched": self._dispatched,
                "late": self._late,
                "total": self._total,
                "ok": self._ok,
                "failed": non_2xx + errors,
                "non_2xx": non_2xx,
                "non_2xx_by_status": dict(sorted(self._status.items())),
                "connection_errors": errors,
                "connection_errors_by_kind": dict(sorted(self._errors.items())),
                "by_endpoint": {name: dict(counts) for name, counts in sorted(self._endpoints.items())},
                "versions": dict(sorted(self._versions.items())),
                "latency_ms": {
                    "p50": ms(percentile(latencies, 0.50)),
                    "p99": ms(percentile(latencies, 0.99)),
                    "max": ms(latencies[-1] if latencies else None),
                },
                "longest_gap_without_success_s": round(gap, 3),
                "longest_gap_began_at_s": round(gap_at, 3),
                "failures_sample": list(self._failures),
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="loopback base URL (the sandbox's nginx)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=30.0, help="stop after this many seconds")
    parser.add_argument("--max-requests", type=int, help="stop after this many requests (default rate*duration)")
    parser.add_argument("--stop-file", help="stop as soon as this file exists")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at most")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--seed", type=int, help="random seed of the request mix")
    parser.add_argument("--out", help="write the JSON summary here too")
    parser.add_argument("--progress", type=float, default=5.0,
                        help="seconds between progress lines on stderr (0: none)")
    parser.add_argument("--fail-on-error", action="store_true", help="exit 1 when any request failed")
    args = parser.parse_args(argv)
    try:
        load = LoadGenerator(args.url, rate=args.rate, duration=args.duration, max_requests=args.max_requests,
                             stop_file=args.stop_file, concurrency=args.concurrency, timeout=args.timeout,
                             seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))

    def on_signal(signum, frame):
        load._stop.set()
        with load._lock:
            load._stopped_by = load._stopped_by or signal.Signals(signum).name

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    load.start()
    while not load.wait(args.progress or None):
        now = load.summary()
        print(f"loadgen: {now['elapsed_s']:.0f}s {now['total']} requests, {now['ok']} ok, "
              f"{now['failed']} failed, versions {now['versions']}", file=sys.stderr, flush=True)
    summary = load.summary()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if args.fail_on_error and summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
