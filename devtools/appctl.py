"""Start, stop, restart and inspect the sample shop's gunicorn on one sandbox host.

The sandbox has no systemd, so the release role's ``command`` service manager
calls this script (stdlib only, any Python 3.9+)::

    python devtools/appctl.py --root .sandbox/hosts/app1 --bind 127.0.0.11:8000 start|stop|restart|status

Host layout (made by the role): ``<root>/current`` → ``releases/<version>``
with its own ``venv``; ``<root>/shared/app.env`` (mode 0600, KEY=VALUE lines:
the database credentials and the secret key); ``<root>/run`` is ours: the
pidfile, logs and gunicorn's control socket.

- ``start``   is idempotent: a running instance is left alone (exit 0). It
  detaches gunicorn completely (own session, no inherited stdin/stdout/stderr,
  so an Ansible ``command`` task does not wait for it), then waits until
  ``/healthz`` answers over HTTP, or fails with the tail of the gunicorn log.
- ``stop``    sends SIGTERM (gunicorn's graceful shutdown: the listener closes,
  requests in flight finish within ``--graceful-timeout``) and waits for the
  master to exit; SIGKILL only after that time has passed.
- ``restart`` is stop (if running) + start, so it picks up a switched ``current``.
- ``status``  exit 0 and a line about the instance when running, 3 when stopped
  (the LSB convention).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

EXIT_STOPPED = 3
# "ModuleNotFoundError: No module named ...", "django.core.exceptions.ImproperlyConfigured: ..."
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|ImproperlyConfigured)\b.*")
# Unix socket paths are limited to 108 bytes (sun_path) including the NUL.
MAX_SOCKET_PATH = 100
# Variables a child may keep from our own environment; everything else comes
# from app.env, so what Ansible or a shell happened to export never leaks in.
INHERITED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "TMPDIR")


class AppctlError(Exception):
    """Something the operator must fix; the message says what."""


class Instance:
    def __init__(self, root: Path, bind: str | None, *, workers: int = 2, threads: int = 4,
                 graceful_timeout: int = 20, start_timeout: float = 60.0):
        self.root = Path(root).absolute()
        self.bind = bind
        self.workers = workers
        self.threads = threads
        self.graceful_timeout = graceful_timeout
        self.start_timeout = start_timeout
        self.run_dir = self.root / "run"
        self.pidfile = self.run_dir / "gunicorn.pid"
        self.error_log = self.run_dir / "gunicorn.log"
        self.access_log = self.run_dir / "access.log"
        self.stdio_log = self.run_dir / "gunicorn.out"
        self.control_socket = self.run_dir / "gunicorn.ctl"
        self.env_file = self.root / "shared" / "app.env"
        self.current = self.root / "current"

    # -- what runs -------------------------------------------------------
    def pid(self) -> int | None:
        """The master's pid when it runs (a stale pidfile is ignored)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_our_gunicorn(pid, self.pidfile) else None

    def describe(self, pid: int) -> str:
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = "?"
        version = "?"
        with contextlib.suppress(OSError):
            version = (Path(cwd) / "RELEASE").read_text().strip()
        return f"running pid={pid} version={version} release_dir={cwd}"

    # -- start -------------------------------------------------------------
    def start(self) -> str:
        running = self.pid()
        if running:
            return f"already {self.describe(running)}"
        if not self.bind:
            raise AppctlError("--bind HOST:PORT is required to start gunicorn")
        host, port = _split_bind(self.bind)
        if _answers(host, port):
            raise AppctlError(
                f"{self.bind} already answers HTTP but no gunicorn of {self.root} runs "
                f"(pidfile {self.pidfile}): stop whatever listens there first"
            )
        release = self._release_dir()
        gunicorn = release / "venv" / "bin" / "gunicorn"
        if not os.access(gunicorn, os.X_OK):
            raise AppctlError(f"{gunicorn} is missing or not executable: build the release's venv first")
        env = self._environment(release)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        self.pidfile.unlink(missing_ok=True)

        argv = [
            str(gunicorn), "shopsite.wsgi:application",
            "--bind", self.bind,
            "--chdir", str(release),
            "--workers", str(self.workers),
            "--threads", str(self.threads),
            "--graceful-timeout", str(self.graceful_timeout),
            "--timeout", "30",
            "--pid", str(self.pidfile),
            "--error-logfile", str(self.error_log),
            "--access-logfile", str(self.access_log),
            "--access-logformat", '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
            "--capture-output",
            "--name", f"shop-{self.root.name}",
        ]
        # gunicorn 27 opens ~/.gunicorn/gunicorn.ctl by default: three hosts run
        # by one user would fight over it, so each instance gets its own path.
        if len(str(self.control_socket)) <= MAX_SOCKET_PATH:
            argv += ["--control-socket", str(self.control_socket)]
        else:
            argv += ["--no-control-socket"]

        log_offset = self.error_log.stat().st_size if self.error_log.exists() else 0
        with open(self.stdio_log, "ab") as stdio:
            # own session: no controlling terminal, not in Ansible's process
            # group; stdin from /dev/null and stdout/stderr into a file, so no
            # pipe of the caller stays open after we return
            process = subprocess.Popen(
                argv, cwd=release, env=env, stdin=subprocess.DEVNULL, stdout=stdio, stderr=stdio,
                start_new_session=True, close_fds=True,
            )
        deadline = time.monotonic() + self.start_timeout
        status = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AppctlError(
                    f"gunicorn exited with status {process.returncode} while starting:\n{self._log_tail(log_offset)}"
                )
            status = _healthz_status(host, port)
            if status is not None and self.pid() == process.pid:
                break
            time.sleep(0.2)
        else:
            _terminate(process.pid, 10)
            raise AppctlError(
                f"gunicorn did not answer on http://{self.bind}/healthz within {self.start_timeout:.0f}s "
                f"(stopped it again):\n{self._log_tail(log_offset)}"
            )
        # we do not wait() for it: it lives on after we exit (init adopts it)
        process.returncode = 0  # silence Popen.__del__'s "still running" warning
        return f"started {self.describe(process.pid)} on {self.bind} (/healthz answered {status})"

    def _release_dir(self) -> Path:
        if not self.current.exists():
            raise AppctlError(f"{self.current} does not exist: deploy a release (releases/<version> + current) first")
        release = self.current.resolve()
        if not (release / "manage.py").exists():
            raise AppctlError(f"{release} (target of {self.current}) has no manage.py: not an unpacked release")
        return release

    def _environment(self, release: Path) -> dict[str, str]:
        env = {key: os.environ[key] for key in INHERITED if key in os.environ}
        env.update(read_env_file(self.env_file))
        env["PWD"] = str(release)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _log_tail(self, offset: int, lines: int = 25) -> str:
        """What gunicorn logged since ``offset``: the last lines, then the exception lines
        (a worker's import error sits above the master's own traceback). The exceptions come
        last because a caller that keeps only the end of a message (the role keeps 800
        characters of stderr) must still see them."""
        chunks, found = [], []
        for path, start in ((self.error_log, offset), (self.stdio_log, 0)):
            try:
                with open(path, "rb") as handle:
                    handle.seek(start if start <= os.path.getsize(path) else 0)
                    text = handle.read().decode("utf-8", "replace")
            except OSError:
                continue
            errors = list(dict.fromkeys(line for line in text.splitlines() if EXCEPTION_LINE.match(line)))
            if errors:
                found.append(f"--- errors in {path} ---\n" + "\n".join(errors[:10]))
            tail = "\n".join(text.splitlines()[-lines:])
            if tail.strip():
                chunks.append(f"--- {path} (last lines) ---\n{tail}")
        return "\n".join(chunks + found) or "(gunicorn wrote no log)"

    # -- stop ----------------------------------------------------------------
    def stop(self) -> str:
        pid = self.pid()
        if not pid:
            return "not running"
        started = time.monotonic()
        how = _terminate(pid, self.graceful_timeout + 10)
        return f"stopped pid={pid} ({how}, {time.monotonic() - started:.1f}s)"

    def restart(self) -> str:
        stopped = self.stop()
        return f"{stopped}; {self.start()}"

    def status(self) -> tuple[int, str]:
        pid = self.pid()
        if pid:
            return 0, self.describe(pid)
        return EXIT_STOPPED, "stopped"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped; one pair of matching quotes stripped."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise AppctlError(f"{path} does not exist: the role writes it from release_environment") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise AppctlError(
            f"{path} has mode {stat.S_IMODE(info.st_mode):04o} but holds secrets: make it 0600 (chmod 600 {path})"
        )
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "a").isalnum() or key[0].isdigit():
            # never echo the line: it may hold a password
            raise AppctlError(f"{path} line {number} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def _split_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise AppctlError(f"--bind {bind!r} must be HOST:PORT, e.g. 127.0.0.11:8000")
    return host.strip("[]"), int(port)


def _healthz_status(host: str, port: int) -> int | None:
    """HTTP status of GET /healthz, or None when nothing answers yet."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/healthz", headers={"User-Agent": "appctl"})
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _answers(host: str, port: int) -> bool:
    return _healthz_status(host, port) is not None


def _proc_state(pid: int) -> str | None:
    """The state letter from /proc/<pid>/stat (Z = zombie), or None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data.rpartition(")")[2].split()[0]


def _alive(pid: int) -> bool:
    # an exited process nobody reaped (PID 1 in some containers never does) is a zombie: count it as gone
    state = _proc_state(pid)
    return state is not None and state != "Z"


def _is_our_gunicorn(pid: int, pidfile: Path) -> bool:
    if not _alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not any(b"gunicorn" in arg for arg in args):
        return False  # the pid was reused by something else
    if b"--pid" in args:
        index = args.index(b"--pid")
        return index + 1 < len(args) and args[index + 1] == str(pidfile).encode()
    return True


def _terminate(pid: int, timeout: float) -> str:
    """SIGTERM (graceful), wait up to ``timeout``; then SIGKILL the whole process group."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "already gone"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return "graceful"
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # gunicorn leads its own session/process group
    return f"killed after {timeout:.0f}s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="the host's release_root")
    parser.add_argument("--bind", help="HOST:PORT gunicorn listens on (needed by start/restart)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (gthread)")
    parser.add_argument("--graceful-timeout", type=int, default=20,
                        help="seconds in-flight requests get to finish on stop")
    parser.add_argument("--start-timeout", type=float, default=60.0,
                        help="seconds to wait for /healthz to answer after start")
    parser.add_argument("action", choices=["start", "stop", "restart", "status"])
    args = parser.parse_args(argv)
    instance = Instance(args.root, args.bind, workers=args.workers, threads=args.threads,
                        graceful_timeout=args.graceful_timeout, start_timeout=args.start_timeout)
    try:
        if args.action == "status":
            code, line = instance.status()
            print(line)
            return code
        print(getattr(instance, args.action)())
        return 0
    except AppctlError as exc:
        print(f"appctl {args.action} {instance.root}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
