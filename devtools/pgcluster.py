"""A throwaway PostgreSQL cluster for the tests, the sandbox and the benchmarks.

Starts the machine's own server binaries (initdb + pg_ctl) in a directory we
own, on a free loopback port, with password (scram) auth over TCP so that the
modules' secret handling is exercised for real. Runs the server as an
unprivileged user when we are root, because PostgreSQL refuses to run as root.

Usage from Python::

    cluster = Cluster(Path("/tmp/pg")).ensure_started()
    cluster.create_role("app", "s3cret", createdb=True)
    cluster.create_database("shop", owner="app")

Usage from a shell (the Makefile)::

    python -m devtools.pgcluster start --dir .sandbox/pg --port 54329
    python -m devtools.pgcluster stop --dir .sandbox/pg
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SUPERUSER = "postgres"


def find_bindir() -> Path:
    """Return the directory with initdb/pg_ctl, newest major first."""
    override = os.environ.get("SAFEDEPLOY_PG_BINDIR")
    if override:
        return Path(override)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for candidate in candidates:
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise SystemExit(
        "No PostgreSQL server binaries found: install the Debian package "
        "postgresql-15 (apt-get install postgresql-15) or set SAFEDEPLOY_PG_BINDIR."
    )


def free_port(*addresses: str) -> int:
    """A TCP port free on every one of ``addresses`` (default: 127.0.0.1)."""
    addresses = addresses or ("127.0.0.1",)
    for _attempt in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        try:
            for address in addresses[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on every one of {', '.join(addresses)}")


def _service_user() -> str | None:
    """The user that runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise SystemExit("running as root and neither a 'postgres' nor a 'nobody' user exists")


class Cluster:
    def __init__(self, base: Path, port: int | None = None, bindir: Path | None = None):
        self.base = Path(base).resolve()
        self.datadir = self.base / "data"
        self.logfile = self.base / "server.log"
        self.statefile = self.base / "cluster.json"
        self.bindir = Path(bindir) if bindir else find_bindir()
        self.user = _service_user()
        state = self._read_state()
        self.port = port or state.get("port") or free_port()
        # unix socket paths are limited to ~107 bytes: keep the socket dir short
        self.sockdir = Path(state.get("sockdir") or f"/tmp/sdpg-{self.port}")
        self.superuser_password = state.get("superuser_password") or os.urandom(12).hex()

    # -- state ---------------------------------------------------------
    def _read_state(self) -> dict:
        try:
            return json.loads(self.statefile.read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self) -> None:
        self.statefile.write_text(
            json.dumps(
                {
                    "port": self.port,
                    "sockdir": str(self.sockdir),
                    "superuser_password": self.superuser_password,
                    "bindir": str(self.bindir),
                }
            )
        )
        os.chmod(self.statefile, 0o600)

    # -- process helpers ----------------------------------------------
    def _run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        if self.user:
            argv = ["runuser", "-u", self.user, "--"] + argv
        kwargs.setdefault("check", True)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        try:
            return subprocess.run(argv, **kwargs)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"{' '.join(argv)} failed (rc={exc.returncode}): {exc.stderr or exc.stdout}"
            ) from exc

    def _chown(self, path: Path) -> None:
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def bin(self, name: str) -> str:
        return str(self.bindir / name)

    # -- lifecycle -----------------------------------------------------
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def running(self) -> bool:
        if not self.initialized():
            return False
        result = self._run([self.bin("pg_ctl"), "status", "-D", str(self.datadir)], check=False)
        return result.returncode == 0

    def _prepare_base(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self._chown(self.base)
        # root-owned parents must be traversable by the service user
        for parent in self.base.parents:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)

    def init(self) -> None:
        self._prepare_base()
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        os.chmod(pwfile, 0o600)
        self._chown(pwfile)
        try:
            self._run(
                [
                    self.bin("initdb"),
                    "-D", str(self.datadir),
                    "-U", SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E", "UTF8",
                    "--no-sync",
                ]
            )
        finally:
            pwfile.unlink()
        self._write_state()

    def start(self) -> None:
        self.sockdir.mkdir(parents=True, exist_ok=True)
        self._chown(self.sockdir)
        self.logfile.touch()
        self._chown(self.logfile)
        options = (
            f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            [
                self.bin("pg_ctl"), "start", "-w", "-t", "60",
                "-D", str(self.datadir), "-l", str(self.logfile), "-o", options,
            ]
        )
        self._write_state()

    def ensure_started(self) -> Cluster:
        if not self.initialized():
            self.init()
        if not self.running():
            self.start()
        return self

    def stop(self) -> None:
        if self.running():
            self._run([self.bin("pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.datadir)])

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.sockdir, ignore_errors=True)

    # -- streaming replica ---------------------------------------------
    def create_replica(self, base: Path, port: int | None = None, timeout: float = 60.0) -> Cluster:
        """A hot-standby streaming replica of this (running) cluster, started and in recovery.

        ``pg_basebackup -R`` over the unix socket as the superuser (initdb's
        pg_hba.conf trusts local replication connections) into ``base/data``,
        then started on its own free port as the same OS user as the primary.
        The replica shares the primary's roles and passwords. Stop it with
        ``destroy()`` before the primary.
        """
        if not self.running():
            raise RuntimeError(f"the primary in {self.base} is not running")
        settings = dict(
            line.split("|", 1)
            for line in self.psql(
                "SELECT name || '|' || setting FROM pg_settings WHERE name IN ('wal_level', 'max_wal_senders')"
            ).splitlines()
        )
        if settings.get("wal_level") == "minimal" or int(settings.get("max_wal_senders", "0")) < 1:
            raise RuntimeError(f"the primary cannot stream WAL to a replica: {settings}")
        replica = Cluster(base, port=port or free_port(), bindir=self.bindir)
        if replica.initialized():
            raise RuntimeError(f"{replica.datadir} already holds a cluster")
        replica.superuser_password = self.superuser_password
        replica._prepare_base()
        self._run(
            [
                self.bin("pg_basebackup"),
                "-D", str(replica.datadir),
                "-h", str(self.sockdir), "-p", str(self.port), "-U", SUPERUSER,
                "-R", "-X", "stream", "--no-sync", "-c", "fast",
            ]
        )
        # pg_basebackup -R wrote standby.signal and primary_conninfo (the socket, no password)
        with open(replica.datadir / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
            conf.write("hot_standby = on\n")
        replica._write_state()
        replica.start()
        deadline = time.monotonic() + timeout
        while replica.psql("SELECT pg_is_in_recovery()") != "t":
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replica on port {replica.port} is not in recovery after {timeout}s")
            time.sleep(0.2)
        self.wait_replayed(replica, timeout=timeout)
        return replica

    def wait_replayed(self, replica: Cluster, timeout: float = 30.0) -> None:
        """Wait until ``replica`` has replayed everything this primary has written so far."""
        target = self.psql("SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + timeout
        while True:
            done = replica.psql(
                f"SELECT pg_last_wal_replay_lsn() IS NOT NULL AND pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
            )
            if done == "t":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replica on port {replica.port} did not replay up to {target} in {timeout}s")
            time.sleep(0.1)

    # -- SQL -------------------------------------------------------------
    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket; return unaligned output."""
        result = self._run(
            [
                self.bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.sockdir), "-p", str(self.port), "-U", SUPERUSER,
                "-d", database, "-f", "-",
            ],
            input=sql,  # on stdin, not argv: the SQL may carry a password
        )
        return result.stdout.strip()

    def create_role(self, name: str, password: str, *, superuser: bool = False,
                    createdb: bool = False) -> None:
        _check_identifier(name)
        flags = " SUPERUSER" if superuser else ""
        flags += " CREATEDB" if createdb else ""
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{name}'")
        verb = "ALTER" if exists else "CREATE"
        escaped = password.replace("'", "''")
        self.psql(f"{verb} ROLE {name} LOGIN{flags} PASSWORD '{escaped}'")

    def create_database(self, name: str, owner: str | None = None) -> None:
        _check_identifier(name)
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
            return
        owner_sql = f" OWNER {owner}" if owner else ""
        self.psql(f"CREATE DATABASE {name}{owner_sql}")

    def drop_database(self, name: str) -> None:
        _check_identifier(name)
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def env(self, user: str, password: str, database: str) -> dict[str, str]:
        """libpq environment for a TCP connection (what the apps and modules get)."""
        return {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": user,
            "PGPASSWORD": password,
            "PGDATABASE": database,
        }


def _check_identifier(name: str) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")


def wait_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "destroy", "status"])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    cluster = Cluster(args.dir, port=args.port)
    if args.action == "start":
        cluster.ensure_started()
        print(f"PostgreSQL ({cluster.bindir}) listening on 127.0.0.1:{cluster.port}")
    elif args.action == "stop":
        cluster.stop()
    elif args.action == "destroy":
        cluster.destroy()
    else:
        print("running" if cluster.running() else "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
