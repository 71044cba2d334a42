"""devtools/loadgen.py against a small local HTTP server whose answers we choose.

The server answers /products/ with 200, /healthz with 503 and drops the
connection on POST /orders/, so every kind of outcome must show up in the
summary with the right count.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devtools import loadgen

REPO = Path(__file__).resolve().parents[2]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/products/":
            body = json.dumps([{"sku": "A-1"}, {"sku": "B-2"}]).encode()
            self.send_response(200)
            self.send_header("X-Release", "9.9.9")
        else:
            body = b'{"status": "error"}'
            self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        order = json.loads(self.rfile.read(length))
        self.server.orders.append(order)
        self.close_connection = True  # no response at all: the client sees a dropped connection

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.orders = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_counts_every_outcome(server):
    summary = loadgen.LoadGenerator(url(server), rate=200, duration=30, max_requests=300, seed=1).run()
    assert summary["stopped_by"] == "max_requests"
    assert summary["total"] == summary["dispatched"] == 300
    per = summary["by_endpoint"]
    assert summary["ok"] == per["GET /products/"]["ok"] == per["GET /products/"]["total"]
    assert summary["non_2xx_by_status"] == {"503": per["GET /healthz"]["total"]}
    assert summary["connection_errors"] == per["POST /orders/"]["total"] == len(server.orders)
    assert summary["failed"] == summary["total"] - summary["ok"]
    # the mix is roughly 70/10/20
    assert 160 <= per["GET /products/"]["total"] <= 250
    assert 10 <= per["GET /healthz"]["total"] <= 55
    assert 30 <= per["POST /orders/"]["total"] <= 95
    assert summary["versions"] == {"9.9.9": summary["ok"]}
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"] <= summary["latency_ms"]["max"]
    assert len(summary["failures_sample"]) == loadgen.FAILURE_SAMPLES
    # orders use the SKUs the server listed, with a customer email
    skus = {item["sku"] for order in server.orders for item in order["items"]}
    assert skus <= {"A-1", "B-2"} and all("@" in order["customer"] for order in server.orders)


def test_duration_bound_and_rate(server):
    started = time.monotonic()
    summary = loadgen.LoadGenerator(url(server), rate=50, duration=1.0, seed=2).run()
    took = time.monotonic() - started
    assert summary["stopped_by"] in {"duration", "max_requests"}
    assert 45 <= summary["total"] <= 50
    assert took < 5


def test_stop_file_and_stop(server, tmp_path):
    stop_file = tmp_path / "stop"
    load = loadgen.LoadGenerator(url(server), rate=20, duration=60, stop_file=stop_file).start()
    time.sleep(0.5)
    stop_file.touch()
    assert load.wait(5), "the stop file did not stop the load"
    assert load.summary()["stopped_by"] == "stop_file"
    assert 5 <= load.summary()["total"] <= 20

    background = loadgen.LoadGenerator(url(server), rate=20, duration=60).start()
    time.sleep(0.3)
    assert background.running and background.summary()["running"] is True
    summary = background.stop()
    assert summary["stopped_by"] == "stop()" and summary["running"] is False
    assert summary["total"] == summary["dispatched"]  # every request sent was waited for


def test_cli_writes_summary_and_refuses_other_hosts(server, tmp_path):
    out = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "devtools.loadgen", "--url", url(server), "--rate", "40", "--duration", "0.5",
         "--out", str(out), "--seed", "3"],
        cwd=REPO, capture_output=True, check=False, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == json.loads(result.stdout)
    assert json.loads(result.stdout)["total"] == 20

    refused = subprocess.run(
        [sys.executable, "-m", "devtools.loadgen", "--url", "http://192.0.2.10:80", "--duration", "1"],
        cwd=REPO, capture_output=True, check=False, text=True, timeout=60,
    )
    assert refused.returncode == 2 and "only targets loopback" in refused.stderr
    with pytest.raises(ValueError, match="rate must be"):
        loadgen.LoadGenerator(url(server), rate=0)
