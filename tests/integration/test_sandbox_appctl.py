"""devtools/appctl.py with real gunicorn, a real PostgreSQL and the sandbox's real nginx.

Each test lays out a host root the way the release role does (releases/<v>,
current, shared/app.env 0600); to skip building a venv per release,
``releases/<v>/venv`` is a symlink to the venv running the tests, which has
Django, psycopg and gunicorn.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from devtools import appctl, build_release, loadgen
from devtools.pgcluster import free_port
from devtools.sandbox import HOSTS, Sandbox

REPO = Path(__file__).resolve().parents[2]
APPCTL = REPO / "devtools" / "appctl.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(sys.prefix) / "bin" / "gunicorn").exists(),
                       reason="gunicorn is not installed in the test interpreter's environment"),
]


def make_root(base: Path, env: dict[str, str], versions=("1.0.0", "2.0.0"), current="1.0.0") -> Path:
    for release, version in ((1, "1.0.0"), (2, "2.0.0")):
        if version not in versions:
            continue
        dest = base / "releases" / version
        dest.mkdir(parents=True)
        artifact = base / f"shop-{version}.tar.gz"
        build_release.build(release, version, artifact)
        with tarfile.open(artifact) as tar:
            tar.extractall(dest, filter="data")
        (dest / "venv").symlink_to(sys.prefix)
    (base / "shared").mkdir()
    env_file = base / "shared" / "app.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**env, "DJANGO_SECRET_KEY": "s" * 50}.items()))
    env_file.chmod(0o600)
    (base / "current").symlink_to(f"releases/{current}")
    return base


def switch(root: Path, version: str) -> None:
    tmp = root / "current.new"
    tmp.symlink_to(f"releases/{version}")
    os.replace(tmp, root / "current")


def migrate(release_dir: Path, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=release_dir, check=True,
                   env={"PATH": os.environ["PATH"], **env}, capture_output=True, timeout=120)


def appctl_run(root: Path, bind: str | None, action: str, timeout: float = 90) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(APPCTL), "--root", str(root), "--graceful-timeout", "15"]
    if bind:
        argv += ["--bind", bind]
    # capture_output + timeout: if gunicorn kept one of our pipes open, this would hang
    return subprocess.run(argv + [action], capture_output=True, check=False, text=True, timeout=timeout)


def get(host: str, port: int, path: str, timeout: float = 10) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture()
def host(tmp_path, pg_database):
    """One host root on 127.0.0.11 with release 1 migrated; gunicorn stopped at the end."""
    root = make_root(tmp_path / "app1", pg_database)
    migrate(root / "releases" / "1.0.0", pg_database)
    bind = f"127.0.0.11:{free_port('127.0.0.11')}"
    yield root, bind
    appctl.Instance(root, bind).stop()


def test_start_is_detached_idempotent_and_stop_is_clean(host):
    root, bind = host
    address, port = bind.split(":")
    started = appctl_run(root, bind, "start")
    assert started.returncode == 0, started.stderr
    assert "started running pid=" in started.stdout and "version=1.0.0" in started.stdout

    status, body = get(address, int(port), "/healthz")
    assert status == 200
    assert (body["status"], body["version"], body["database"], body["pending_migrations"]) == ("ok", "1.0.0", "ok", 0)

    pid = int((root / "run" / "gunicorn.pid").read_text())
    # fully detached: own session, no pipe of the caller on stdin/stdout/stderr
    assert os.getsid(pid) == pid
    fds = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)}
    assert fds[0] == "/dev/null"
    # --capture-output: gunicorn points stdout/stderr at its error log
    assert fds[1] == fds[2] == str(root / "run" / "gunicorn.log"), fds
    # its own control socket, not the shared ~/.gunicorn/gunicorn.ctl
    assert (root / "run" / "gunicorn.ctl").is_socket()
    # the secrets came from app.env and nowhere else: not on the command line
    assert b"PGPASSWORD" not in Path(f"/proc/{pid}/cmdline").read_bytes()

    again = appctl_run(root, bind, "start")
    assert again.returncode == 0 and f"already running pid={pid}" in again.stdout

    running = appctl_run(root, None, "status")
    assert running.returncode == 0 and f"pid={pid} version=1.0.0" in running.stdout

    stopped = appctl_run(root, None, "stop")
    assert stopped.returncode == 0 and f"stopped pid={pid} (graceful" in stopped.stdout
    assert appctl_run(root, None, "status").returncode == appctl.EXIT_STOPPED
    assert appctl_run(root, None, "stop").stdout.strip() == "not running"
    with pytest.raises(OSError):
        socket.create_connection((address, int(port)), timeout=2).close()


def test_stop_lets_requests_in_flight_finish(host):
    root, bind = host
    address, port = bind.split(":")
    assert appctl_run(root, bind, "start").returncode == 0
    results: list = []

    def slow_request():
        try:
            results.append(get(address, int(port), "/slow/?ms=2000"))
        except Exception as exc:  # recorded, asserted below
            results.append(exc)

    threads = [threading.Thread(target=slow_request) for _index in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.7)  # the three are being served now
    began = time.monotonic()
    stopped = appctl_run(root, None, "stop")
    took = time.monotonic() - began
    for thread in threads:
        thread.join(15)
    assert stopped.returncode == 0 and "(graceful" in stopped.stdout
    assert results == [(200, {"slept_ms": 2000, "version": "1.0.0"})] * 3
    assert took >= 0.8, f"stop returned after {took:.2f}s, before the requests in flight had finished"


def test_restart_switches_release_and_starts_when_stopped(host, pg_database):
    root, bind = host
    address, port = bind.split(":")
    # restart of a stopped instance starts it (the role's rollout only ever calls restart)
    first = appctl_run(root, bind, "restart")
    assert first.returncode == 0 and "not running; started" in first.stdout, first.stderr
    migrate(root / "releases" / "2.0.0", pg_database)
    switch(root, "2.0.0")
    second = appctl_run(root, bind, "restart")
    assert second.returncode == 0, second.stderr
    assert "version=2.0.0" in second.stdout
    assert get(address, int(port), "/healthz")[1]["version"] == "2.0.0"


def test_start_failures_say_what_to_fix(tmp_path, pg_database):
    bind = f"127.0.0.11:{free_port('127.0.0.11')}"
    nothing = appctl_run(tmp_path / "empty", bind, "start")
    assert nothing.returncode == 1 and "deploy a release" in nothing.stderr

    root = make_root(tmp_path / "bad", pg_database, versions=("1.0.0",))
    env_file = root / "shared" / "app.env"
    env_file.chmod(0o644)
    loose = appctl_run(root, bind, "start")
    assert loose.returncode == 1 and "make it 0600" in loose.stderr
    assert pg_database["PGPASSWORD"] not in loose.stderr

    env_file.chmod(0o600)
    with env_file.open("a") as handle:
        handle.write("DJANGO_SETTINGS_MODULE=shopsite.no_such_settings\n")
    broken = appctl_run(root, bind, "start")
    assert broken.returncode == 1
    assert "gunicorn exited" in broken.stderr and "no_such_settings" in broken.stderr, broken.stderr
    assert appctl_run(root, None, "status").returncode == appctl.EXIT_STOPPED


def test_rolling_restart_behind_nginx_loses_no_request(tmp_path, pg_database):
    """Release 1 on three hosts behind the sandbox's nginx; under load: release 2's
    migrations, then host by host drain → switch → restart → undrain. Nothing fails."""
    app_port = free_port(*(address for _name, address in HOSTS))
    sandbox = Sandbox(tmp_path / "sandbox", lb_port=free_port("127.0.0.1"), app_port=app_port,
                      python=sys.executable)
    instances = []
    try:
        for name, address in HOSTS:
            root = make_root(sandbox.hosts_dir / name, pg_database)
            instances.append((name, root, appctl.Instance(root, f"{address}:{app_port}")))
        migrate(instances[0][1] / "releases" / "1.0.0", pg_database)
        for _name, _root, instance in instances:
            instance.start()
        sandbox.ensure_nginx()
        reload_nginx = sandbox.nginx_argv("-s", "reload")

        load = loadgen.LoadGenerator(f"http://127.0.0.1:{sandbox.lb_port}", rate=40, duration=120,
                                     concurrency=8, seed=7).start()
        time.sleep(1)
        migrate(instances[0][1] / "releases" / "2.0.0", pg_database)  # expand, under load
        for name, root, instance in instances:
            sandbox.upstream_file.write_text(sandbox.upstream_lines(drained={name}))
            subprocess.run(reload_nginx, check=True, capture_output=True)
            assert sandbox.drained_hosts() == [name]
            time.sleep(0.5)
            switch(root, "2.0.0")
            instance.restart()
            address, port = instance.bind.split(":")
            assert get(address, int(port), "/healthz")[1]["version"] == "2.0.0"
            sandbox.upstream_file.write_text(sandbox.upstream_lines())
            subprocess.run(reload_nginx, check=True, capture_output=True)
            time.sleep(0.5)
        time.sleep(1)
        summary = load.stop()
    finally:
        for _name, _root, instance in instances:
            instance.stop()
        sandbox.stop_nginx()

    assert summary["failed"] == 0, json.dumps(summary, indent=2)
    assert summary["total"] >= 100
    assert set(summary["versions"]) == {"1.0.0", "2.0.0"}
    assert summary["by_endpoint"]["POST /orders/"]["ok"] > 0
