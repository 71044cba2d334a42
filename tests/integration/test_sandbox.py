"""`python -m devtools.sandbox` for real: PostgreSQL, wheelhouse, artifacts, nginx, inventory.

The sandbox is built once for this module in a temporary directory, on free
ports (so a running ``make demo`` is not disturbed), and purged at the end.
The tests run in file order: the last one takes it down.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import psycopg
import pytest

from devtools.pgcluster import free_port
from devtools.sandbox import HOSTS, Sandbox

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")), reason="nginx missing"),
]


def sandbox_cli(base: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # capture_output + timeout: nginx or PostgreSQL holding our pipes would hang this
    return subprocess.run([sys.executable, "-m", "devtools.sandbox", *args, "--dir", str(base)],
                          cwd=REPO, capture_output=True, check=False, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    base = tmp_path_factory.mktemp("sbx") / ".sandbox"
    lb_port, app_port = free_port(), free_port()
    result = sandbox_cli(base, "up", "--lb-port", str(lb_port), "--app-port", str(app_port))
    assert result.returncode == 0, result.stdout + result.stderr
    yield Sandbox(base), result.stdout
    sandbox_cli(base, "down", "--purge")


def test_up_builds_everything(sandbox):
    box, output = sandbox
    assert "nginx:      started" in output
    # secrets: 0600 files in a 0700 directory
    assert mode(box.secrets_dir) == 0o700
    assert mode(box.db_env_file) == 0o600
    db_env = dict(line.split("=", 1) for line in box.db_env_file.read_text().splitlines())
    assert set(db_env) == {"PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "DJANGO_SECRET_KEY"}
    assert db_env["PGPASSWORD"] not in output
    # the app role really logs in with that password over TCP, into an empty database it owns
    with psycopg.connect(host=db_env["PGHOST"], port=db_env["PGPORT"], user="shop_app",
                         password=db_env["PGPASSWORD"], dbname="shop") as conn:
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'").fetchone()
        assert owner == ("shop_app",)
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    # artifacts of both releases
    for version in ("1.0.0", "2.0.0"):
        with tarfile.open(box.artifacts / f"shop-{version}.tar.gz") as tar:
            assert tar.extractfile("RELEASE").read().decode().strip() == version
    # every host root exists, nothing deployed yet
    for name, _address in HOSTS:
        assert (box.hosts_dir / name / "releases").is_dir()
        assert not (box.hosts_dir / name / "current").exists()
    # nginx answers (502: no app host runs yet)
    conn = socket.create_connection(("127.0.0.1", box.lb_port), timeout=5)
    conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
    assert conn.recv(64).startswith(b"HTTP/1.1 502")
    conn.close()


def test_inventory_matches_the_spec(sandbox):
    box, _output = sandbox
    python = os.path.abspath(sys.executable)
    hosts = (box.inventory_dir / "hosts.ini").read_text().splitlines()
    for name, address in HOSTS:
        assert f"{name} ansible_host={address} release_root={box.hosts_dir / name}" in hosts
    assert hosts[hosts.index("[app:vars]") + 1:][:2] == [
        "ansible_connection=local",
        f"ansible_python_interpreter={python}",
    ]
    assert f"localhost ansible_connection=local ansible_python_interpreter={python}" in hosts
    assert hosts.index("[lb]") < hosts.index(f"localhost ansible_connection=local ansible_python_interpreter={python}")

    group_vars = box.inventory_dir / "group_vars" / "app"
    text = (group_vars / "sandbox.yml").read_text()
    values = dict(re.findall(r"^(release_\w+): (.+)$", text, re.M))
    assert values["release_service_manager"] == "command"
    assert values["release_http_port"] == str(box.app_port)
    assert json.loads(values["release_pip_args"]) == f"--no-index --find-links {box.wheelhouse}"
    assert values["release_lb"] == "nginx" and values["release_lb_host"] == "localhost"
    assert json.loads(values["release_nginx_upstream_file"]) == str(box.upstream_file)
    assert json.loads(values["release_lb_url"]) == f"http://127.0.0.1:{box.lb_port}"
    assert json.loads(values["release_snapshot_dir"]) == str(box.snapshots)
    assert values["release_expected_database"] == "shop"
    commands = dict(re.findall(r"^  (start|stop|restart|status): (.+)$", text, re.M))
    for action, command in commands.items():
        assert json.loads(command) == (
            f"{python} {REPO / 'devtools' / 'appctl.py'} --root {{{{ release_root }}}} "
            f"--bind {{{{ ansible_host }}}}:{box.app_port} {action}"
        )
    assert len(commands) == 4
    # the reload command works as written (nginx runs)
    reload = subprocess.run(json.loads(values["release_nginx_reload_command"]), shell=True, capture_output=True,
                            check=False)
    assert reload.returncode == 0, reload.stderr

    secrets = group_vars / "secrets.yml"
    assert mode(secrets) == 0o600
    password = box.db_env_file.read_text().split("PGPASSWORD=")[1].splitlines()[0]
    assert f'  PGPASSWORD: "{password}"' in secrets.read_text().splitlines()
    assert password not in text


def test_nginx_config_is_valid_and_sized(sandbox):
    box, _output = sandbox
    checked = subprocess.run(box.nginx_argv("-t"), capture_output=True, check=False, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr
    conf = box.nginx_conf.read_text()
    assert "worker_connections 4096;" in conf
    assert f"pid {box.nginx_dir}/nginx.pid;" in conf
    assert "@@" not in conf
    assert box.upstream_file.read_text().splitlines() == [
        f"server {address}:{box.app_port} max_fails=1 fail_timeout=2s;" for _name, address in HOSTS
    ]
    assert box.upstream_lines(drained={"app2"}).splitlines()[1] == \
        f"server 127.0.0.12:{box.app_port} max_fails=1 fail_timeout=2s down;"


def test_wheelhouse_installs_a_release_offline(sandbox, tmp_path):
    """What the role does on each host: a venv per release, pip from the wheelhouse only."""
    box, _output = sandbox
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    with tarfile.open(box.artifacts / "shop-2.0.0.tar.gz") as tar:
        tar.extractall(tmp_path / "release", filter="data")
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "--find-links", str(box.wheelhouse),
         "-r", str(tmp_path / "release" / "requirements.txt")],
        capture_output=True, check=False, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    version = subprocess.run([str(venv / "bin" / "gunicorn"), "--version"], capture_output=True, check=False, text=True)
    assert version.returncode == 0
    check = subprocess.run([str(venv / "bin" / "python"), "manage.py", "check"], cwd=tmp_path / "release",
                           capture_output=True, check=False, text=True)
    assert check.returncode == 0, check.stderr


def test_up_again_keeps_what_runs(sandbox):
    box, _output = sandbox
    nginx_pid = box.nginx_pid()
    before = {p: p.read_bytes() for p in (box.db_env_file, box.inventory_dir / "group_vars/app/secrets.yml")}
    artifact_mtime = (box.artifacts / "shop-1.0.0.tar.gz").stat().st_mtime_ns
    again = sandbox_cli(box.base, "up")
    assert again.returncode == 0, again.stderr
    assert f"running (pid {nginx_pid})" in again.stdout
    assert "(cached)" in again.stdout and "(unchanged)" in again.stdout
    assert box.nginx_pid() == nginx_pid
    assert {p: p.read_bytes() for p in before} == before  # same password, same secret key
    assert (box.artifacts / "shop-1.0.0.tar.gz").stat().st_mtime_ns == artifact_mtime
    status = sandbox_cli(box.base, "status")
    assert status.returncode == 0
    assert "postgresql  running" in status.stdout and f"nginx       running pid={nginx_pid}" in status.stdout
    assert status.stdout.count("stopped (nothing deployed)") == 3


def test_load_command_counts_failures(sandbox, tmp_path):
    box, _output = sandbox
    out = tmp_path / "load.json"
    result = sandbox_cli(box.base, "load", "--rate", "20", "--duration", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    # nothing is deployed: every request is a 502 from nginx, and each one is counted
    assert summary["total"] == 20
    assert summary["ok"] == 0 and summary["non_2xx_by_status"] == {"502": 20}
    strict = sandbox_cli(box.base, "load", "--rate", "10", "--duration", "0.5", "--fail-on-error")
    assert strict.returncode == 1


def test_down_stops_everything(sandbox):
    box, _output = sandbox
    nginx_pid = box.nginx_pid()
    down = sandbox_cli(box.base, "down")
    assert down.returncode == 0, down.stderr
    assert not os.path.exists(f"/proc/{nginx_pid}") or box.nginx_pid() is None
    status = sandbox_cli(box.base, "status")
    assert status.returncode == 3
    assert "postgresql  stopped" in status.stdout and "nginx       stopped" in status.stdout
    assert box.wheelhouse.exists() and box.db_env_file.exists()  # kept without --purge
    purge = sandbox_cli(box.base, "down", "--purge")
    assert purge.returncode == 0 and not box.base.exists()
