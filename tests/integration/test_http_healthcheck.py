"""http_healthcheck through real Ansible against a real HTTP server started by the test.

The server (stdlib http.server in a thread, 127.0.0.1, free port) is scripted per
test: unhealthy for the first N requests, a given JSON version, 500s forever, a
sequence of good/bad answers, TLS with a self-signed certificate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devtools import ansible_task

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULE = "safedeploy.django.http_healthcheck"

pytestmark = pytest.mark.slow


def run_task(tmp_path: Path, module: str, args: dict, **kwargs) -> tuple[dict, subprocess.CompletedProcess]:
    """Run one task with ansible-playbook; the test servers are local, never through a proxy."""
    kwargs.setdefault("env", {"no_proxy": "127.0.0.1,localhost"})
    kwargs.setdefault("timeout", 120)
    return ansible_task.run_task(tmp_path, module, args, **kwargs)


class Script:
    """What the fake app answers; one instance per server, shared with the handler."""

    def __init__(self, fail_first=0, version="2.0.0", fail_status=503, sequence=None):
        self.fail_first = fail_first
        self.version = version
        self.fail_status = fail_status
        self.sequence = sequence  # list of bools: healthy answer or not, then healthy forever
        self.requests = []
        self.lock = threading.Lock()

    def answer(self, headers) -> tuple[int, dict]:
        with self.lock:
            self.requests.append(dict(headers))
            n = len(self.requests)
        if self.sequence is not None:
            healthy = self.sequence[n - 1] if n <= len(self.sequence) else True
        else:
            healthy = n > self.fail_first
        if healthy:
            return 200, {"status": "ok", "version": self.version, "database": "ok", "pending_migrations": 0}
        return self.fail_status, {"status": "error", "version": self.version, "database": "down"}


@pytest.fixture()
def server():
    servers = []

    def start(script: Script, tls: tuple[str, str] | None = None) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                status, doc = script.answer(self.headers)
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
            scheme = "https"
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"{scheme}://127.0.0.1:{httpd.server_address[1]}/healthz"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_becomes_healthy_after_failures(tmp_path, server):
    script = Script(fail_first=3)
    url = server(script)
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "interval": 0.2, "deadline": 20,
                                                "json": {"status": "ok", "version": "2.0.0"}})
    assert not result.get("failed"), result.get("msg")
    assert result["healthy"] is True and result["changed"] is False
    assert result["attempts"] == 4 == len(script.requests)
    assert result["status"] == 200
    assert result["json"]["version"] == "2.0.0"
    assert result["last_error"] == "status was 503, expected 200"


def test_never_healthy_fails_after_deadline(tmp_path, server):
    script = Script(fail_first=10**6, fail_status=500)
    url = server(script)
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "interval": 0.3, "deadline": 2})
    assert result["failed"] is True and result["healthy"] is False
    assert result["msg"].startswith(f"{url} was not healthy within the deadline of 2s (")
    assert result["msg"].endswith(": status was 500, expected 200")
    assert 1.4 <= result["elapsed"] <= 4
    assert result["attempts"] >= 4 and result["attempts"] == len(script.requests)
    assert result["status"] == 500 and result["json"]["status"] == "error"


def test_wrong_json_version(tmp_path, server):
    url = server(Script(version="1.0.0"))
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "interval": 0.2, "deadline": 1,
                                                "json": {"version": "2.0.0", "status": "ok"}})
    assert result["failed"] is True
    assert result["msg"].endswith("json field version was '1.0.0', expected '2.0.0'")
    assert result["problems"] == ["json field version was '1.0.0', expected '2.0.0'"]


def test_version_compared_type_insensitively(tmp_path, server):
    url = server(Script(version="2"))
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "json": {"version": 2}, "deadline": 2})
    assert result["healthy"] is True, result.get("msg")


def test_connection_refused(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result, _proc = run_task(tmp_path, MODULE, {"url": f"http://127.0.0.1:{port}/healthz", "interval": 0.2,
                                                "deadline": 1})
    assert result["failed"] is True and result["status"] is None
    assert result["msg"].endswith("request failed: connection refused (nothing listens on that address and port)")
    assert result["attempts"] >= 3


def test_consecutive_successes_required(tmp_path, server):
    script = Script(sequence=[True, False, True, True, False, True])
    url = server(script)
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "interval": 0.1, "deadline": 20, "consecutive": 3})
    assert result["healthy"] is True
    # healthy at request 8: the third good answer after the last bad one (6, 7, 8)
    assert result["attempts"] == 8 == len(script.requests)
    assert result["successes_in_a_row"] == 3


def test_check_mode_polls_for_real(tmp_path, server):
    script = Script(fail_first=1)
    url = server(script)
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "interval": 0.1, "deadline": 10}, check=True)
    assert result["healthy"] is True and result["changed"] is False
    assert len(script.requests) == 2
    # and a failing check fails in check mode too
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "json": {"version": "9"}, "deadline": 0.5}, check=True)
    assert result["failed"] is True and "json field version was '2.0.0', expected '9'" in result["msg"]


def test_host_header_sent_and_value_not_shown(tmp_path, server):
    script = Script()
    url = server(script)
    token = "tok-" + os.urandom(6).hex()
    result, proc = run_task(tmp_path, MODULE, {"url": url, "headers": {"Host": "shop.example",
                                                                       "X-Health-Token": token}}, verbosity=3)
    assert result["healthy"] is True
    assert script.requests[0]["Host"] == "shop.example"
    assert script.requests[0]["X-Health-Token"] == token
    assert token not in json.dumps(result)
    assert token not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


def test_tls_validation_and_ca_path(tmp_path, server, self_signed):
    url = server(Script(), tls=self_signed)
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "deadline": 0.5})
    assert result["failed"] is True
    assert "certificate" in result["msg"].lower() and "ca_path" in result["msg"]
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "deadline": 2, "ca_path": self_signed[0]})
    assert result["healthy"] is True, result.get("msg")
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "deadline": 2, "validate_certs": False})
    assert result["healthy"] is True, result.get("msg")
