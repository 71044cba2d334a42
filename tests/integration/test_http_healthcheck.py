"""http_healthcheck through real Ansible against a real HTTP(S) server started by the test.

The server (stdlib http.server in a thread, 127.0.0.1, free port) is scripted per
test: unhealthy for the first N requests, a given JSON version, 500s forever, a
sequence of good/bad answers, a body of its own, slow answers, basic authentication;
over TLS with a certificate from a test CA (made with `cryptography`, see
tests/unit/plugins/module_utils/test_http_tls.py), optionally requiring a client
certificate from that CA. It records what each request carried (method, headers,
client certificate) and the TLS server names it was asked for.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devtools import ansible_task
from tests.unit.plugins.module_utils.test_http_tls import make_pki

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULE = "safedeploy.django.http_healthcheck"

pytestmark = pytest.mark.slow


def run_task(tmp_path: Path, module: str, args: dict, **kwargs) -> tuple[dict, subprocess.CompletedProcess]:
    """Run one task with ansible-playbook; the test servers are local, never through a proxy."""
    kwargs.setdefault("env", {"no_proxy": "127.0.0.1,localhost"})
    kwargs.setdefault("timeout", 120)
    return ansible_task.run_task(tmp_path, module, args, **kwargs)


def run_tasks(tmp_path: Path, tasks: list[dict], *, verbosity: int = 0,
              ) -> tuple[list[dict], subprocess.CompletedProcess]:
    """Run several http_healthcheck tasks, one after the other, in one ansible-playbook run (each
    run costs seconds); return their registered results in order."""
    out = tmp_path / f"results-{len(list(tmp_path.glob('results-*')))}.json"
    names = [f"r{i}" for i in range(len(tasks))]
    play = [{
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [
            *({"name": f"check {i}", MODULE: args, "register": name, "ignore_errors": True}
              for i, (name, args) in enumerate(zip(names, tasks, strict=True))),
            {"name": "save results", "check_mode": False,
             "ansible.builtin.copy": {"content": "{{ [" + ", ".join(names) + "] | to_json }}", "dest": str(out)}},
        ],
    }]
    playbook = tmp_path / "play-many.yml"
    playbook.write_text(json.dumps(play))
    argv = [str(BIN / "ansible-playbook"), str(playbook)] + (["-" + "v" * verbosity] if verbosity else [])
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               ANSIBLE_DEPRECATION_WARNINGS="0", no_proxy="127.0.0.1,localhost")
    proc = subprocess.run(argv, capture_output=True, check=False, text=True, env=env, cwd=tmp_path, timeout=180)
    assert out.exists(), f"playbook did not finish:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text()), proc


class Script:
    """What the fake app answers; one instance per server, shared with the handler."""

    def __init__(self, fail_first=0, version="2.0.0", fail_status=503, sequence=None, body=None,
                 content_type="application/json", status=200, headers=(), delay=0.0, basic_auth=None):
        self.fail_first = fail_first
        self.version = version
        self.fail_status = fail_status
        self.sequence = sequence  # list of bools: healthy answer or not, then healthy forever
        self.body = body  # a fixed body (str) instead of the JSON document
        self.content_type = content_type
        self.status = status
        self.headers = list(headers)  # extra response headers
        self.delay = delay  # seconds before answering
        self.basic_auth = basic_auth  # (user, password) required, else 401
        self.requests = []  # request headers, one dict per request
        self.methods = []
        self.clients = []  # client certificate common name per request (None without)
        self.server_names = []  # TLS server names (SNI) asked for
        self.bodies = []  # request bodies of POSTs
        self.in_flight = 0
        self.most_in_flight = 0  # requests being answered at the same time, at most
        self.lock = threading.Lock()

    def answer(self, handler) -> tuple[int, list, bytes]:
        with self.lock:
            self.requests.append(dict(handler.headers))
            self.methods.append(handler.command)
            peer = handler.connection.getpeercert() if isinstance(handler.connection, ssl.SSLSocket) else None
            self.clients.append(dict(x[0] for x in peer["subject"])["commonName"] if peer else None)
            n = len(self.requests)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return self._answer(handler, n)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, handler, n) -> tuple[int, list, bytes]:
        if self.delay:
            time.sleep(self.delay)
        if self.basic_auth:
            wanted = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if handler.headers.get("Authorization") != wanted:
                return 401, [("WWW-Authenticate", 'Basic realm="health"')], b"login first"
        headers = [("Content-Type", self.content_type), *self.headers]
        if self.body is not None:
            return self.status, headers, self.body.encode()
        if self.sequence is not None:
            healthy = self.sequence[n - 1] if n <= len(self.sequence) else True
        else:
            healthy = n > self.fail_first
        if healthy:
            doc = {"status": "ok", "version": self.version, "database": "ok", "pending_migrations": 0}
            return self.status, headers, json.dumps(doc).encode()
        doc = {"status": "error", "version": self.version, "database": "down"}
        return self.fail_status, headers, json.dumps(doc).encode()


@pytest.fixture()
def server():
    servers = []

    def start(script: Script, tls: tuple[str, str] | ssl.SSLContext | None = None) -> str:
        class Handler(BaseHTTPRequestHandler):
            def answer(self, with_body=True):
                status, headers, body = script.answer(self)
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body and status not in (204, 304):
                    self.wfile.write(body)

            def do_GET(self):  # noqa: N802 - http.server API
                self.answer()

            def do_POST(self):  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with script.lock:
                    script.bodies.append(body)
                self.answer()

            def do_OPTIONS(self):  # noqa: N802 - http.server API
                self.answer()

            def do_HEAD(self):  # noqa: N802 - http.server API
                self.answer(with_body=False)

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            if isinstance(tls, ssl.SSLContext):
                context = tls
            else:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(*tls)
            context.sni_callback = lambda _sock, name, _ctx: script.server_names.append(name)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
            scheme = "https"
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"{scheme}://127.0.0.1:{httpd.server_address[1]}/healthz"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_server_context(pki, cert="server", client_ca=None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki[cert], pki[f"{cert}_key"])
    if client_ca:
        context.load_verify_locations(cafile=pki[client_ca])
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def free_port() -> int:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- polling, expectations and messages --------------------------------------------------------

def test_becomes_healthy_after_failures(tmp_path, server):
    script = Script(fail_first=3)
    url = server(script)
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "interval": 0.2, "deadline": 20,
                                                "json": {"status": "ok", "version": "2.0.0"}})
    assert not result.get("failed"), result.get("msg")
    assert result["healthy"] is True and result["changed"] is False
    assert result["attempts"] == 4 == len(script.requests)
    assert result["successes"] == 1 and result["successes_in_a_row"] == 1
    assert result["status"] == 200 and result["url"] == url
    assert result["json"]["version"] == "2.0.0"
    assert result["last_error"] == "status was 503, expected 200"
    assert result["problems"] == []
    assert result["headers"]["content-type"] == "application/json"
    assert json.loads(result["body_excerpt"])["version"] == "2.0.0"


def test_never_healthy_fails_after_deadline(tmp_path, server):
    script = Script(fail_first=10**6, fail_status=500)
    url = server(script)
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "interval": 0.3, "deadline": 2})
    assert result["failed"] is True and result["healthy"] is False
    attempts = result["attempts"]
    assert result["msg"].startswith(f"{url} was not healthy within the deadline of 2s ({attempts} attempts in ")
    assert result["msg"].endswith(": status was 500, expected 200")
    assert 1.4 <= result["elapsed"] <= 4
    assert result["attempts"] >= 4 and result["attempts"] == len(script.requests)
    assert result["status"] == 500 and result["json"]["status"] == "error"
    assert result["successes"] == 0 and result["last_error"] == "status was 500, expected 200"


def test_deadline_zero_makes_one_attempt(tmp_path, server):
    script = Script(fail_first=10**6)
    url = server(script)
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "deadline": 0})
    assert result["failed"] is True and result["attempts"] == 1 == len(script.requests)
    assert "within the deadline of 0s (1 attempts in " in result["msg"]


def test_wrong_json_version(tmp_path, server):
    url = server(Script(version="1.0.0"))
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "interval": 0.2, "deadline": 1,
                                                "json": {"version": "2.0.0", "status": "ok"}})
    assert result["failed"] is True
    assert result["msg"].endswith("json field version was '1.0.0', expected '2.0.0'")
    assert result["problems"] == ["json field version was '1.0.0', expected '2.0.0'"]
    assert result["last_error"] == "json field version was '1.0.0', expected '2.0.0'"


def test_json_field_mismatch_nested_missing_and_every_problem(tmp_path, server):
    body = json.dumps({"status": "degraded", "version": "1.0.0", "checks": {"database": {"ok": False}}})
    url = server(Script(body=body, status=503))
    result, _proc = run_task(tmp_path, MODULE, {
        "url": url, "deadline": 0, "status_code": [200, 204],
        "json": {"version": "2.0.0", "checks.database.ok": True, "checks.cache": "ok", "status": "degraded"},
    })
    assert result["failed"] is True and result["status"] == 503
    assert result["problems"] == [
        "status was 503, expected one of [200, 204]",
        "json field version was '1.0.0', expected '2.0.0'",
        "json field checks.database.ok was 'false', expected 'true'",
        "json field checks.cache is missing, expected 'ok'",
    ]
    assert result["msg"].endswith(": " + "; ".join(result["problems"]))


def test_version_compared_type_insensitively(tmp_path, server):
    url = server(Script(version="2"))
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "json": {"version": 2}, "deadline": 2})
    assert result["healthy"] is True, result.get("msg")


def test_body_not_json(tmp_path, server):
    url = server(Script(body="<html>maintenance</html>", content_type="text/html"))
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "deadline": 0, "json": {"version": "2.0.0"}})
    assert result["failed"] is True and result["json"] is None
    assert result["last_error"] == ("body is not JSON (Expecting value: line 1 column 1 (char 0); "
                                    "body starts '<html>maintenance</html>')")


def test_body_contains_and_regex(tmp_path, server):
    url = server(Script(body="<html>maintenance</html>", content_type="text/html"))
    contains, regex, both = (dict(url=url, deadline=0, **args) for args in (
        {"body_contains": "ready", "body_regex": r"^<html>\w+</html>$"},
        {"body_regex": "^ready$"},
        {"body_contains": "maint", "body_regex": r"^<html>\w+</html>$"},
    ))
    results, _proc = run_tasks(tmp_path, [contains, regex, both])
    assert results[0]["failed"] is True
    assert results[0]["problems"] == ["body does not contain 'ready' (body starts '<html>maintenance</html>')"]
    assert results[1]["problems"] == ["body does not match regex '^ready$' (body starts '<html>maintenance</html>')"]
    assert results[2]["healthy"] is True, results[2].get("msg")


def test_status_code_list(tmp_path, server):
    url = server(Script(body="", status=204))
    results, _proc = run_tasks(tmp_path, [{"url": url, "deadline": 0},
                                          {"url": url, "deadline": 0, "status_code": [200, 204]}])
    assert results[0]["failed"] is True and results[0]["last_error"] == "status was 204, expected 200"
    assert results[1]["healthy"] is True and results[1]["status"] == 204 and results[1]["body_excerpt"] == ""


def test_connection_refused(tmp_path):
    port = free_port()
    result, _proc = run_task(tmp_path, MODULE, {"url": f"http://127.0.0.1:{port}/healthz", "interval": 0.2,
                                                "deadline": 1})
    assert result["failed"] is True and result["status"] is None and result["headers"] == {}
    assert result["msg"].endswith("request failed: connection refused (nothing listens on that address and port)")
    assert result["last_error"] == "request failed: connection refused (nothing listens on that address and port)"
    assert result["attempts"] >= 3


def test_timeout_per_request(tmp_path, server):
    script = Script(delay=3)
    url = server(script)
    started = time.monotonic()
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "timeout": 0.5, "deadline": 0})
    assert result["failed"] is True and result["status"] is None
    assert result["last_error"] == "request failed: timed out after 0.5s"
    assert result["elapsed"] < 2 and time.monotonic() - started < 30


def test_consecutive_successes_required(tmp_path, server):
    script = Script(sequence=[True, False, True, True, False, True])
    url = server(script)
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "interval": 0.1, "deadline": 20, "consecutive": 3})
    assert result["healthy"] is True
    # healthy at request 8: the third good answer after the last bad one (6, 7, 8)
    assert result["attempts"] == 8 == len(script.requests)
    assert result["successes_in_a_row"] == 3 and result["successes"] == 6


def test_consecutive_not_reached_by_the_deadline(tmp_path, server):
    script = Script(sequence=[False, True])
    url = server(script)
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "interval": 0.3, "deadline": 1, "consecutive": 5})
    assert result["failed"] is True and result["problems"] == []
    in_a_row = result["successes_in_a_row"]
    assert 1 <= in_a_row == result["attempts"] - 1 < 5
    assert result["msg"].endswith(f"only {in_a_row} healthy responses in a row, 5 required "
                                  "(earlier: status was 503, expected 200)")


def test_check_mode_polls_for_real(tmp_path, server):
    script = Script(fail_first=1)
    url = server(script)
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "interval": 0.1, "deadline": 10}, check=True)
    assert result["healthy"] is True and result["changed"] is False
    assert len(script.requests) == 2
    # and a failing check fails in check mode too
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "json": {"version": "9"}, "deadline": 0.5}, check=True)
    assert result["failed"] is True and "json field version was '2.0.0', expected '9'" in result["msg"]


def test_methods(tmp_path, server):
    script = Script()
    url = server(script)
    methods = ["GET", "HEAD", "POST", "OPTIONS"]
    results, _proc = run_tasks(tmp_path, [{"url": url, "method": method, "deadline": 0} for method in methods])
    assert [r["healthy"] for r in results] == [True] * 4, [r.get("msg") for r in results]
    assert script.methods == methods
    assert [r["body_excerpt"] == "" for r in results] == [False, True, False, False]


def test_post_body_sent_as_json_and_not_sent_in_check_mode(tmp_path, server):
    script = Script()
    url = server(script)
    body = {"customer": "warmup@example.com", "lines": {"SKU-1": 2}, "api_token": "tok-never-shown"}
    result, proc = run_task(tmp_path, MODULE, {"url": url, "method": "POST", "body": body, "deadline": 0},
                            verbosity=3)
    assert result["healthy"] is True and result["changed"] is False
    assert [json.loads(b) for b in script.bodies] == [body]
    assert script.requests[0]["Content-Type"] == "application/json"
    assert '"api_token": "********"' in proc.stdout  # the invocation shown at -vvv
    assert "tok-never-shown" not in proc.stdout + proc.stderr
    # a POST may change something: check mode does not send it, and says so
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "method": "POST", "body": "x=1", "deadline": 0},
                             check=True)
    assert result["skipped"] is True and "a POST is not sent" in result["msg"]
    assert len(script.bodies) == 1


def test_parallel_requests_reach_the_server_together(tmp_path, server):
    script = Script(delay=0.4)
    url = server(script)
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "parallel": 6, "consecutive": 2, "interval": 0.1,
                                                "deadline": 30})
    assert result["healthy"] is True and result["attempts"] == 2 and result["requests"] == 12
    assert len(script.requests) == 12
    assert script.most_in_flight == 6
    # one bad answer among the parallel ones makes the attempt unhealthy
    script = Script(sequence=[True, True, False], delay=0.2)
    url = server(script)
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "parallel": 3, "deadline": 0})
    assert result["healthy"] is False and result["status"] == 503
    assert result["msg"].endswith("1 of 3 parallel requests failed, the first: status was 503, expected 200")


# -- headers, secrets and what is returned -----------------------------------------------------

def test_host_header_sent_and_value_not_shown(tmp_path, server):
    script = Script(body="hello, your token is {}", content_type="text/plain")
    url = server(script)
    token = "tok-" + os.urandom(6).hex()
    script.body = script.body.format(token)  # a server that echoes the token back
    result, proc = run_task(tmp_path, MODULE, {"url": url, "headers": {"Host": "shop.example",
                                                                       "X-Health-Token": token}}, verbosity=3)
    assert result["healthy"] is True
    assert script.requests[0]["Host"] == "shop.example"
    assert script.requests[0]["X-Health-Token"] == token
    assert result["body_excerpt"] == "hello, your token is ********"
    assert token not in json.dumps(result)
    assert token not in proc.stdout + proc.stderr


def test_body_excerpt_truncated_and_redacted(tmp_path, server):
    secret_key = "sk-" + os.urandom(20).hex()
    db_password = "pw-" + os.urandom(8).hex()
    api_key = "ak-" + os.urandom(8).hex()
    cookie = "sid-" + os.urandom(8).hex()
    body = ('{"status": "ok", "version": "2.0.0", '
            f'"database_url": "postgres://app:{db_password}@db/shop", "secret_key": "{secret_key}", '
            f'"api_key": "{api_key}", "padding": "' + "x" * 300 + '"}')
    url = server(Script(body=body, headers=[("Set-Cookie", f"sessionid={cookie}; HttpOnly"), ("X-Release", "2.0.0"),
                                            ("X-Api-Key", api_key)]))
    result, proc = run_task(tmp_path, MODULE, {"url": url, "deadline": 0, "body_excerpt_size": 120,
                                               "json": {"version": "2.0.0"}}, verbosity=3)
    assert result["healthy"] is True, result.get("msg")
    redacted = ('{"status": "ok", "version": "2.0.0", "database_url": "postgres://app:********@db/shop", '
                '"secret_key": "********", "api_key": "********", "padding": "' + "x" * 300 + '"}')
    assert result["body_excerpt"] == redacted[:120] + f"...[truncated, body is {len(body)} bytes]"
    assert result["json"] == {"status": "ok", "version": "2.0.0", "database_url": "postgres://app:********@db/shop",
                              "secret_key": "********", "api_key": "********", "padding": "x" * 300}
    assert result["headers"]["set-cookie"] == "********" and result["headers"]["x-api-key"] == "********"
    assert result["headers"]["x-release"] == "2.0.0"
    output = json.dumps(result) + proc.stdout + proc.stderr
    for secret in (secret_key, db_password, api_key, cookie):
        assert secret not in output


def test_secret_in_a_failure_message_is_redacted(tmp_path, server):
    secret = "pw-" + os.urandom(8).hex()
    url = server(Script(body=f"DATABASE_PASSWORD={secret} not ready", content_type="text/plain"))
    result, proc = run_task(tmp_path, MODULE, {"url": url, "deadline": 0, "body_contains": "ready!"})
    assert result["failed"] is True
    assert result["msg"].endswith("body does not contain 'ready!' (body starts 'DATABASE_PASSWORD=******** not ready')")
    assert secret not in json.dumps(result) + proc.stdout


def test_url_credentials_used_and_never_shown(tmp_path, server):
    password = "pw-" + os.urandom(8).hex()
    script = Script(basic_auth=("health", password))
    url = server(script)
    (good, wrong), proc = run_tasks(tmp_path, [
        {"url": url.replace("http://", f"http://health:{password}@"), "deadline": 0},
        {"url": url.replace("http://", "http://health:wrong-pw-1@"), "deadline": 0},
    ], verbosity=3)
    assert good["healthy"] is True, good.get("msg")
    assert good["url"] == url
    # asked without credentials first, then answered the 401 with them
    assert "Authorization" not in script.requests[0] and script.requests[1]["Authorization"].startswith("Basic ")
    assert wrong["failed"] is True and wrong["last_error"] == "status was 401, expected 200"
    assert wrong["msg"].startswith(f"{url} was not healthy") and wrong["url"] == url
    for secret in (password, "wrong-pw-1"):
        assert secret not in json.dumps([good, wrong]) + proc.stdout + proc.stderr


# -- TLS -------------------------------------------------------------------------------------------

def test_tls_validation_and_ca_path(tmp_path, server, pki):
    url = server(Script(), tls=(pki["server"], pki["server_key"]))
    (system, ca_path, unverified), _proc = run_tasks(tmp_path, [
        {"url": url, "deadline": 0.5},
        {"url": url, "deadline": 2, "ca_path": pki["ca"]},
        {"url": url, "deadline": 2, "validate_certs": False},
    ])
    assert system["failed"] is True
    assert system["last_error"] == ("request failed: TLS certificate verification failed: unable to get local issuer "
                                    "certificate (set ca_path or validate_certs)")
    assert "certificate verification failed" in system["msg"]
    assert ca_path["healthy"] is True, ca_path.get("msg")
    assert unverified["healthy"] is True, unverified.get("msg")


def test_client_certificate_required(tmp_path, server, pki):
    script = Script()
    url = server(script, tls=tls_server_context(pki, client_ca="ca"))
    base = {"url": url, "deadline": 0, "ca_path": pki["ca"]}
    (none, key_apart, combined, rogue), proc = run_tasks(tmp_path, [
        base,
        dict(base, client_cert=pki["client"], client_key=pki["client_key"]),
        dict(base, client_cert=pki["client_combined"]),
        dict(base, client_cert=pki["rogue_client"], client_key=pki["client_key"]),
    ], verbosity=3)

    assert none["failed"] is True and none["status"] is None
    # the server's alert, or (timing) just the connection closing: both name the cause
    assert none["last_error"] in (
        "request failed: TLS handshake failed: the server requires a client certificate (set client_cert) "
        "[TLSV13_ALERT_CERTIFICATE_REQUIRED]",
        "request failed: TLS error: the server closed the connection unexpectedly; does the server require a "
        "client certificate (set client_cert)?",
    )
    assert key_apart["healthy"] is True, key_apart.get("msg")
    assert combined["healthy"] is True, combined.get("msg")
    assert rogue["failed"] is True
    assert rogue["last_error"] in (
        "request failed: TLS handshake failed: the server does not trust the client certificate (unknown CA) "
        "[TLSV1_ALERT_UNKNOWN_CA]",
        "request failed: TLS error: the server closed the connection unexpectedly; does the server trust the "
        "client certificate (client_cert)?",
    )
    # only the two good certificates got as far as an HTTP request
    assert script.clients == ["health-client", "health-client"]
    key_lines = Path(pki["client_key"]).read_text().splitlines()[1:-1]
    assert key_lines and not any(line in proc.stdout + proc.stderr for line in key_lines)


def test_server_name_follows_the_host_header_or_server_name(tmp_path, server, pki):
    script = Script()
    url = server(script, tls=tls_server_context(pki, cert="shop"))  # a certificate for shop.example only
    port = url.split(":")[2].split("/")[0]
    base = {"url": url, "deadline": 0, "ca_path": pki["ca"]}
    (address, host_header, server_name), _proc = run_tasks(tmp_path, [
        base,
        dict(base, headers={"Host": f"shop.example:{port}"}),
        dict(base, server_name="shop.example"),
    ])
    assert address["failed"] is True
    assert address["last_error"] == ("request failed: TLS certificate verification failed: IP address mismatch, "
                                     "certificate is not valid for '127.0.0.1'. (set server_name)")
    assert host_header["healthy"] is True, host_header.get("msg")
    assert server_name["healthy"] is True, server_name.get("msg")
    # no server name for an address; the Host header's host, then server_name
    assert script.server_names == [None, "shop.example", "shop.example"]
    assert [r["Host"] for r in script.requests] == [f"shop.example:{port}", f"127.0.0.1:{port}"]


def test_https_url_on_a_plain_http_port(tmp_path, server):
    url = server(Script()).replace("http://", "https://")
    result, _proc = run_task(tmp_path, MODULE, {"url": url, "deadline": 0})
    assert result["last_error"] == ("request failed: TLS handshake failed: the server does not speak TLS on this "
                                    "port (use http://?) [WRONG_VERSION_NUMBER]")


# -- argument errors: refused before any request ---------------------------------------------------

ARGUMENT_ERRORS = [
    ({"body_regex": "[a-z"},
     "body_regex '[a-z' is not a valid regular expression: unterminated character set at position 0"),
    ({"client_key": "{client_key}"}, "missing parameter(s) required by 'client_key': client_cert"),
    ({"ca_path": "/nonexistent/ca.pem"}, "ca_path /nonexistent/ca.pem does not exist"),
    ({"client_cert": "{not_pem}"}, "cannot load client_cert {not_pem}: "),
    ({"client_cert": "{client}", "client_key": "{client_key_encrypted}"},
     "cannot load client_cert {client} / client_key {client_key_encrypted}: "),
    ({"status_code": [200, 600]}, "status_code 600 is not an HTTP status code (100 to 599)"),
    ({"interval": 0}, "interval must be greater than 0, got 0"),
    ({"deadline": -1}, "deadline must be 0 or more, got -1"),
    ({"consecutive": 0}, "consecutive must be 1 or more, got 0"),
    ({"timeout": 0}, "timeout must be greater than 0, got 0"),
    ({"url": "ftp://127.0.0.1/healthz"}, "url 'ftp://127.0.0.1/healthz' must start with http:// or https://"),
    ({"url": "http:///healthz"}, "url 'http:///healthz' has no host name"),
]


def test_argument_errors(tmp_path, server, pki):
    script = Script()
    url = server(script)
    tasks = []
    for args, _message in ARGUMENT_ERRORS:
        args = {name: value.format(**pki) if isinstance(value, str) else value for name, value in args.items()}
        tasks.append({"url": url, "deadline": 0, **args})
    results, _proc = run_tasks(tmp_path, tasks)
    for (args, message), result in zip(ARGUMENT_ERRORS, results, strict=True):
        assert result["failed"] is True and result["msg"].startswith(message.format(**pki)), (args, result["msg"])
        assert result.get("healthy") is not True
    assert script.requests == []
