"""The sandbox behind ``make demo``: a small, real fleet on one machine.

Everything lives under ``.sandbox/`` in the repository (or ``--dir``)::

    pg/                 PostgreSQL (devtools.pgcluster), role shop_app, database shop
    secrets/db.env      0600: the database credentials and Django secret key (KEY=VALUE)
    wheelhouse/         wheels of the sample app's requirements (hosts install offline)
    artifacts/          shop-1.0.0.tar.gz, shop-2.0.0.tar.gz (devtools/build_release.py)
    hosts/app{1,2,3}/   release roots of three hosts on 127.0.0.11-13 (gunicorn :8000)
    nginx/              the load balancer on 127.0.0.1:8080: nginx.conf, upstream.conf, logs
    inventory/          hosts.ini + group_vars/app/{sandbox.yml,secrets.yml (0600)}
    snapshots/          where the deploy's pg_snapshot writes

Commands (from the repository root, with the project's interpreter)::

    python -m devtools.sandbox up               # build/start what is missing; keeps what runs
    python -m devtools.sandbox status           # what runs (exit 0 when all of db + lb run)
    python -m devtools.sandbox load [--rate 20 --duration 60 ...]   # devtools.loadgen through nginx
    python -m devtools.sandbox build-artifacts  # only (re)build the release tarballs
    python -m devtools.sandbox down [--purge]   # stop gunicorn (every host), nginx, PostgreSQL

``up`` does not deploy anything: the hosts stay empty until the release role
deploys an artifact (``ansible-playbook -i .sandbox/inventory/hosts.ini ...``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from devtools import appctl, build_release, loadgen
from devtools.pgcluster import Cluster

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO / ".sandbox"
HOSTS = (("app1", "127.0.0.11"), ("app2", "127.0.0.12"), ("app3", "127.0.0.13"))
RELEASES = ((1, "1.0.0"), (2, "2.0.0"))
DB_NAME = "shop"
DB_USER = "shop_app"
REQUIREMENTS = build_release.SAMPLE_APP / "common" / "requirements.txt"
NGINX_TEMPLATE = Path(__file__).resolve().parent / "nginx" / "nginx.conf.in"


class SandboxError(Exception):
    """Something the user must fix; the message says what."""


def _write_private(path: Path, text: str) -> bool:
    """Write a 0600 file atomically (never readable by others, not even briefly). True if it changed."""
    if path.exists() and path.read_text() == text:
        os.chmod(path, 0o600)
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return True


def _write(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def _read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            env[key.strip()] = value.strip()
    return env


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


class Sandbox:
    def __init__(self, base: Path = DEFAULT_DIR, *, lb_port: int | None = None, app_port: int | None = None,
                 python: str | None = None):
        self.base = Path(base).absolute()
        self.config_file = self.base / "sandbox.json"
        saved = self._saved_config()
        self.lb_port = lb_port or saved.get("lb_port") or 8080
        self.app_port = app_port or saved.get("app_port") or 8000
        # the interpreter running us (the project venv's): not resolved, since a venv's
        # python is a symlink to the base interpreter and resolving it would lose the venv
        self.python = python or os.path.abspath(sys.executable)
        self.pg_dir = self.base / "pg"
        self.secrets_dir = self.base / "secrets"
        self.db_env_file = self.secrets_dir / "db.env"
        self.wheelhouse = self.base / "wheelhouse"
        self.artifacts = self.base / "artifacts"
        self.hosts_dir = self.base / "hosts"
        self.nginx_dir = self.base / "nginx"
        self.nginx_conf = self.nginx_dir / "nginx.conf"
        self.upstream_file = self.nginx_dir / "upstream.conf"
        self.nginx_pidfile = self.nginx_dir / "nginx.pid"
        self.inventory_dir = self.base / "inventory"
        self.snapshots = self.base / "snapshots"

    def _saved_config(self) -> dict:
        try:
            return json.loads(self.config_file.read_text())
        except (OSError, ValueError):
            return {}

    # -- up ------------------------------------------------------------------
    def up(self, log=print) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        # ports are remembered so that status/down/load find what up started
        _write(self.config_file, json.dumps({"lb_port": self.lb_port, "app_port": self.app_port}, indent=2) + "\n")
        for directory in (self.secrets_dir, self.snapshots):
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        cluster, db_env = self.ensure_database()
        log(f"postgresql: 127.0.0.1:{cluster.port}, database {DB_NAME} owned by {DB_USER} "
            f"(credentials in {self.db_env_file})")
        log(f"wheelhouse: {self.ensure_wheelhouse()}")
        for line in self.build_artifacts():
            log(f"artifact:   {line}")
        for name, _ in HOSTS:
            for sub in ("releases", "shared", "run"):
                (self.hosts_dir / name / sub).mkdir(parents=True, exist_ok=True)
        log(f"hosts:      {', '.join(f'{n} {a}:{self.app_port}' for n, a in HOSTS)} under {self.hosts_dir}")
        log(f"nginx:      {self.ensure_nginx()}")
        self.write_inventory(db_env)
        log(f"inventory:  {self.inventory_dir / 'hosts.ini'}")

    def ensure_database(self) -> tuple[Cluster, dict[str, str]]:
        cluster = Cluster(self.pg_dir).ensure_started()
        if self.db_env_file.exists():
            saved = _read_env(self.db_env_file)
            password, secret_key = saved.get("PGPASSWORD"), saved.get("DJANGO_SECRET_KEY")
        else:
            password = secret_key = None
        password = password or secrets.token_hex(16)
        secret_key = secret_key or secrets.token_urlsafe(48)
        cluster.create_role(DB_USER, password)  # ALTER when it exists: same password again
        cluster.create_database(DB_NAME, owner=DB_USER)
        env = cluster.env(DB_USER, password, DB_NAME)
        env["DJANGO_SECRET_KEY"] = secret_key
        _write_private(self.db_env_file, "".join(f"{key}={value}\n" for key, value in env.items()))
        return cluster, env

    def ensure_wheelhouse(self) -> str:
        """pip wheel the sample app's requirements once; cached by the requirements' hash."""
        digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
        marker = self.wheelhouse / ".requirements.sha256"
        wheels = sorted(self.wheelhouse.glob("*.whl"))
        if wheels and marker.exists() and marker.read_text().strip() == digest:
            return f"{len(wheels)} wheels in {self.wheelhouse} (cached)"
        self.wheelhouse.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [self.python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(self.wheelhouse),
             "-r", str(REQUIREMENTS)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise SandboxError(
                f"pip wheel -r {REQUIREMENTS} failed (rc={result.returncode}); the hosts install from this "
                f"wheelhouse without an index, so it must be complete:\n{result.stderr[-3000:]}"
            )
        marker.write_text(digest + "\n")
        wheels = sorted(self.wheelhouse.glob("*.whl"))
        return f"{len(wheels)} wheels in {self.wheelhouse}"

    def build_artifacts(self) -> list[str]:
        lines = []
        for release, version in RELEASES:
            out = self.artifacts / f"shop-{version}.tar.gz"
            changed = build_release.build(release, version, out)
            lines.append(f"{out} ({'built' if changed else 'unchanged'})")
        return lines

    # -- nginx ---------------------------------------------------------------
    @staticmethod
    def nginx_binary() -> str:
        found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
        if not found:
            raise SandboxError("nginx is not installed: apt-get install nginx (Debian) or put nginx on PATH")
        return found

    def nginx_argv(self, *extra: str) -> list[str]:
        # -e: nginx opens its compiled-in error log before reading the config; keep even that in our prefix
        return [self.nginx_binary(), "-e", str(self.nginx_dir / "logs" / "error.log"),
                "-p", str(self.nginx_dir), "-c", str(self.nginx_conf), *extra]

    def render_nginx_conf(self) -> str:
        text = NGINX_TEMPLATE.read_text()
        # workers of a root master switch to `user` (default nobody, which could not
        # write our temp dirs); as another user nginx ignores the directive anyway
        user = "user root root;" if os.geteuid() == 0 else "# user: not root, nginx keeps our own user"
        for key, value in {
            "USER": user,
            "PREFIX": str(self.nginx_dir),
            "UPSTREAM_FILE": str(self.upstream_file),
            "LISTEN": f"127.0.0.1:{self.lb_port}",
        }.items():
            text = text.replace(f"@@{key}@@", value)
        return text

    def upstream_lines(self, drained: set[str] = frozenset()) -> str:
        lines = []
        for name, address in HOSTS:
            down = " down" if name in drained else ""
            lines.append(f"server {address}:{self.app_port} max_fails=1 fail_timeout=2s{down};\n")
        return "".join(lines)

    def nginx_pid(self) -> int | None:
        try:
            pid = int(self.nginx_pidfile.read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError):
            return None
        return pid if comm == "nginx" and appctl._alive(pid) else None

    def _nginx(self, *extra: str) -> None:
        result = subprocess.run(self.nginx_argv(*extra), stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if result.returncode != 0:
            raise SandboxError(f"nginx {' '.join(extra) or 'start'} failed: {result.stderr.strip()}")

    def ensure_nginx(self) -> str:
        for sub in ("logs", "tmp"):
            (self.nginx_dir / sub).mkdir(parents=True, exist_ok=True)
        if not self.upstream_file.exists():
            # the role edits this file (drain/undrain): never overwrite it once it exists
            _write(self.upstream_file, self.upstream_lines())
        conf_changed = _write(self.nginx_conf, self.render_nginx_conf())
        self._nginx("-t", "-q")
        pid = self.nginx_pid()
        if pid:
            if conf_changed:
                self._nginx("-s", "reload")
                return f"reloaded (pid {pid}) on 127.0.0.1:{self.lb_port}"
            return f"running (pid {pid}) on 127.0.0.1:{self.lb_port}"
        # nginx daemonizes; start it in its own session with no pipes of ours
        # so that nobody waiting on our output waits on nginx too
        errors = self.nginx_dir / "logs" / "startup.err"
        with open(errors, "w") as err:
            result = subprocess.run(self.nginx_argv(), stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    start_new_session=True)
        if result.returncode != 0:
            raise SandboxError(f"nginx did not start: {errors.read_text().strip()}")
        deadline = time.monotonic() + 10
        while not self.nginx_pid() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not self.nginx_pid():
            raise SandboxError(f"nginx did not write {self.nginx_pidfile}: see {self.nginx_dir / 'logs/error.log'}")
        return f"started (pid {self.nginx_pid()}) on 127.0.0.1:{self.lb_port}"

    def stop_nginx(self) -> str:
        pid = self.nginx_pid()
        if not pid:
            return "not running"
        os.kill(pid, signal.SIGQUIT)  # graceful: finish the requests in flight
        deadline = time.monotonic() + 15
        while appctl._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if appctl._alive(pid):
            os.kill(pid, signal.SIGTERM)
            return f"stopped (pid {pid}, fast after 15s)"
        return f"stopped (pid {pid})"

    def drained_hosts(self) -> list[str]:
        try:
            text = self.upstream_file.read_text()
        except OSError:
            return []
        addresses = {f"{address}:{self.app_port}": name for name, address in HOSTS}
        drained = []
        for line in text.splitlines():
            words = line.replace(";", " ; ").split()
            if words[:1] == ["server"] and len(words) > 1 and "down" in words:
                drained.append(addresses.get(words[1], words[1]))
        return drained

    # -- inventory -------------------------------------------------------------
    def appctl_command(self, action: str) -> str:
        script = REPO / "devtools" / "appctl.py"
        return (f"{shlex.quote(self.python)} {shlex.quote(str(script))} --root {{{{ release_root }}}} "
                f"--bind {{{{ ansible_host }}}}:{self.app_port} {action}")

    def write_inventory(self, db_env: dict[str, str]) -> None:
        group_vars = self.inventory_dir / "group_vars" / "app"
        group_vars.mkdir(parents=True, exist_ok=True)
        hosts = ["# Written by `python -m devtools.sandbox up`: three app hosts on loopback addresses.", "[app]"]
        hosts += [f"{name} ansible_host={address} release_root={self.hosts_dir / name}" for name, address in HOSTS]
        hosts += [
            "", "[app:vars]", "ansible_connection=local", f"ansible_python_interpreter={self.python}",
            "", "[lb]", f"localhost ansible_connection=local ansible_python_interpreter={self.python}", "",
        ]
        _write(self.inventory_dir / "hosts.ini", "\n".join(hosts))

        reload_command = " ".join(shlex.quote(arg) for arg in self.nginx_argv("-s", "reload"))
        sandbox_vars = [
            "# Written by `python -m devtools.sandbox up`; secrets are in secrets.yml (0600).",
            "release_service_manager: command",
            "release_service_commands:",
            *(f"  {action}: {_q(self.appctl_command(action))}" for action in ("start", "stop", "restart", "status")),
            f"release_http_port: {self.app_port}",
            f"release_pip_args: {_q(f'--no-index --find-links {self.wheelhouse}')}",
            "release_lb: nginx",
            "release_lb_host: localhost",
            f"release_nginx_upstream_file: {_q(str(self.upstream_file))}",
            f"release_nginx_reload_command: {_q(reload_command)}",
            f"release_lb_url: {_q(f'http://127.0.0.1:{self.lb_port}')}",
            "# the shop's order path, rolled back (shop/warmup.py), on every worker thread before undrain",
            "release_warmup_requests:",
            "  - path: /warmup",
            "    method: POST",
            '    body: {customer: warmup@example.com, items: [{sku: TEA-001, qty: 1}, {sku: CUP-001, qty: 2}]}',
            "release_warmup_parallel: 8  # 2 workers x 4 threads (devtools/appctl.py)",
            f"release_snapshot_dir: {_q(str(self.snapshots))}",
            f"release_expected_database: {DB_NAME}",
            "",
        ]
        _write(group_vars / "sandbox.yml", "\n".join(sandbox_vars))
        secret_vars = ["# Written by `python -m devtools.sandbox up` (mode 0600). Never commit.",
                       "release_environment:"]
        secret_vars += [f"  {key}: {_q(value)}" for key, value in db_env.items()]
        _write_private(group_vars / "secrets.yml", "\n".join(secret_vars) + "\n")

    # -- status / down -----------------------------------------------------------
    def served_versions(self, timeout: float = 5) -> dict[str, str | None]:
        """What each host's /healthz says it serves (None: not answering, or not JSON)."""
        versions = {}
        for name, address in HOSTS:
            try:
                url = f"http://{address}:{self.app_port}/healthz"
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    versions[name] = json.load(response).get("version")
            except (OSError, ValueError):
                versions[name] = None
        return versions

    def app_instances(self) -> list[tuple[str, str, appctl.Instance]]:
        return [(name, address, appctl.Instance(self.hosts_dir / name, f"{address}:{self.app_port}"))
                for name, address in HOSTS]

    def status(self) -> tuple[int, list[str]]:
        lines = []
        cluster = Cluster(self.pg_dir) if (self.pg_dir / "data").exists() else None
        pg_up = bool(cluster and cluster.running())
        lines.append(f"postgresql  {'running on 127.0.0.1:' + str(cluster.port) if pg_up else 'stopped'}")
        pid = self.nginx_pid()
        drained = self.drained_hosts()
        lb = f"running pid={pid} on http://127.0.0.1:{self.lb_port}" if pid else "stopped"
        lines.append(f"nginx       {lb}{' (drained: ' + ', '.join(drained) + ')' if drained else ''}")
        for name, address, instance in self.app_instances():
            code, text = instance.status() if instance.root.exists() else (appctl.EXIT_STOPPED, "no host root")
            current = instance.current
            deployed = f" current={os.readlink(current)}" if current.is_symlink() else " (nothing deployed)"
            lines.append(f"{name:<11} {address}:{self.app_port} {text}{deployed}")
        wheels = len(list(self.wheelhouse.glob("*.whl")))
        lines.append(f"wheelhouse  {wheels} wheels")
        artifacts = sorted(p.name for p in self.artifacts.glob("*.tar.gz"))
        lines.append(f"artifacts   {' '.join(artifacts) or 'none'}")
        return (0 if pg_up and pid else EXIT_NOT_UP), lines

    def down(self, purge: bool = False, log=print) -> None:
        for name, _, instance in self.app_instances():
            if instance.root.exists():
                log(f"{name}: {instance.stop()}")
        log(f"nginx: {self.stop_nginx()}")
        if (self.pg_dir / "data").exists():
            cluster = Cluster(self.pg_dir)
            if purge:
                cluster.destroy()
                log("postgresql: destroyed")
            else:
                cluster.stop()
                log("postgresql: stopped")
        if purge:
            shutil.rmtree(self.base, ignore_errors=True)
            log(f"removed {self.base}")


EXIT_NOT_UP = 3


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="sandbox directory (default: .sandbox)")
    parser = argparse.ArgumentParser(prog="python -m devtools.sandbox", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="build and start what is missing (idempotent)")
    up.add_argument("--lb-port", type=int, help="nginx port on 127.0.0.1 (default 8080; remembered)")
    up.add_argument("--app-port", type=int, help="gunicorn port on every host (default 8000; remembered)")
    down = sub.add_parser("down", parents=[common], help="stop gunicorn on every host, nginx, PostgreSQL")
    down.add_argument("--purge", action="store_true", help="then delete the whole sandbox directory")
    sub.add_parser("status", parents=[common], help="print what runs")
    sub.add_parser("build-artifacts", parents=[common], help="(re)build the release tarballs only")
    load = sub.add_parser("load", parents=[common], help="bounded load through nginx (devtools.loadgen)")
    load.add_argument("--rate", type=float, default=20.0)
    load.add_argument("--duration", type=float, default=60.0)
    load.add_argument("--max-requests", type=int)
    load.add_argument("--stop-file")
    load.add_argument("--out")
    load.add_argument("--fail-on-error", action="store_true")
    args = parser.parse_args(argv)

    sandbox = Sandbox(args.dir, lb_port=getattr(args, "lb_port", None), app_port=getattr(args, "app_port", None))
    try:
        if args.command == "up":
            sandbox.up()
            return 0
        if args.command == "down":
            sandbox.down(purge=args.purge)
            return 0
        if args.command == "status":
            code, lines = sandbox.status()
            print("\n".join(lines))
            return code
        if args.command == "build-artifacts":
            print("\n".join(sandbox.build_artifacts()))
            return 0
        forwarded = ["--url", f"http://127.0.0.1:{sandbox.lb_port}", "--rate", str(args.rate),
                     "--duration", str(args.duration)]
        for option in ("max_requests", "stop_file", "out"):
            value = getattr(args, option)
            if value is not None:
                forwarded += [f"--{option.replace('_', '-')}", str(value)]
        if args.fail_on_error:
            forwarded.append("--fail-on-error")
        return loadgen.main(forwarded)
    except (SandboxError, appctl.AppctlError, RuntimeError) as exc:
        print(f"sandbox {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
