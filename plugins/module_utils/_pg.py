# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL client plumbing shared by the collection's database modules.

Private module (leading underscore): no stable API outside this collection.

Everything here talks to PostgreSQL through the libpq command line clients
(``psql``, ``pg_dump``, ``pg_restore``) so the managed host needs no Python
driver. Secrets reach those children only through the environment
(``PGPASSWORD``) or a passfile (``PGPASSFILE``) -- never through argv, where
any local user could read them in ``ps`` output.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

SSL_MODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
DEFAULT_PORT = 5432
DEFAULT_CONNECT_TIMEOUT = 10

# Where distributions put versioned client binaries, newest picked first.
CLIENT_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql-*/bin")


def connection_argument_spec() -> dict:
    """Argument spec of the connection options (documented by doc fragment safedeploy.django.postgres)."""
    return dict(
        host=dict(type="str"),
        port=dict(type="int"),
        database=dict(type="str", required=True, aliases=["db"]),
        user=dict(type="str"),
        password=dict(type="str", no_log=True),
        passfile=dict(type="path"),
        sslmode=dict(type="str", choices=SSL_MODES),
        ca_cert=dict(type="path", aliases=["ssl_rootcert"]),
        ssl_cert=dict(type="path"),
        ssl_key=dict(type="path", no_log=False),
        connect_timeout=dict(type="int"),
    )


class PgError(Exception):
    """A failure with a message that tells the user what to change."""

    def __init__(self, message: str, kind: str = "error", **details):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.details = details


@dataclass
class Connection:
    """Effective connection target: module options, falling back to the libpq environment."""

    database: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    passfile: str | None = None
    sslmode: str | None = None
    ca_cert: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    connect_timeout: int | None = None

    @classmethod
    def from_params(cls, params: Mapping) -> Connection:
        return cls(
            database=params["database"],
            host=params.get("host"),
            port=params.get("port"),
            user=params.get("user"),
            password=params.get("password"),
            passfile=params.get("passfile"),
            sslmode=params.get("sslmode"),
            ca_cert=params.get("ca_cert"),
            ssl_cert=params.get("ssl_cert"),
            ssl_key=params.get("ssl_key"),
            connect_timeout=params.get("connect_timeout"),
        )

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a libpq client child: the only channel for the password."""
        env = dict(os.environ if base is None else base)
        settings = {
            "PGHOST": self.host,
            "PGPORT": str(self.port) if self.port is not None else None,
            "PGUSER": self.user,
            "PGDATABASE": self.database,
            "PGSSLMODE": self.sslmode,
            "PGSSLROOTCERT": self.ca_cert,
            "PGSSLCERT": self.ssl_cert,
            "PGSSLKEY": self.ssl_key,
            "PGPASSFILE": self.passfile,
        }
        for key, value in settings.items():
            if value is not None:
                env[key] = value
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        elif self.passfile is not None:
            # libpq prefers PGPASSWORD over the passfile; an explicit passfile must win.
            env.pop("PGPASSWORD", None)
        if self.connect_timeout is not None:
            env["PGCONNECT_TIMEOUT"] = str(self.connect_timeout)
        env.setdefault("PGCONNECT_TIMEOUT", str(DEFAULT_CONNECT_TIMEOUT))
        env.setdefault("PGAPPNAME", "safedeploy.django")
        # Never let a client fall back to an interactive prompt or a user's ~/.psqlrc.
        env["PSQLRC"] = os.devnull
        return env

    def describe(self, env: Mapping[str, str] | None = None) -> dict:
        """Where we connect, for messages and manifests: never the password."""
        env = os.environ if env is None else env
        port = self.port if self.port is not None else env.get("PGPORT") or DEFAULT_PORT
        return {
            "host": self.host or env.get("PGHOST") or "(local socket)",
            "port": int(port),
            "database": self.database,
            "user": self.user or env.get("PGUSER") or _current_os_user(),
        }

    def secrets(self, env: Mapping[str, str] | None = None) -> list[str]:
        env = os.environ if env is None else env
        values = [self.password, env.get("PGPASSWORD")]
        return [v for v in values if v]


def _current_os_user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return "(current user)"


# -- running clients ------------------------------------------------------------------

Runner = Callable[[list, Mapping[str, str]], tuple[int, str, str]]


def run_client(argv: list[str], env: Mapping[str, str], timeout: float | None = None) -> tuple[int, str, str]:
    """Run a client with a private umask (files it creates are 0600) and no stdin."""
    try:
        proc = subprocess.run(
            argv,
            env=dict(env),
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            umask=0o077,
        )
    except subprocess.TimeoutExpired as exc:
        raise PgError(f"{os.path.basename(argv[0])} did not finish within {timeout}s", kind="timeout") from exc
    except OSError as exc:
        raise PgError(f"cannot run {argv[0]}: {exc.strerror}", kind="client_missing") from exc
    return proc.returncode, proc.stdout, proc.stderr


class PsqlSession:
    r"""One long-lived ``psql`` whose statements share a session (and so a transaction).

    Used to export a snapshot that ``pg_dump --snapshot`` imports while this session keeps
    its transaction open, so that what we read (tables, row counts, migrations) is exactly
    what the dump holds. Statements go to psql's stdin; each is followed by an ``\echo`` of
    a random marker so that we know where its output ends. The password travels in the
    environment, as for every other client.
    """

    def __init__(self, psql: str, env: Mapping[str, str], target: Mapping, timeout: float | None = None):
        self.target = target
        self.timeout = timeout
        self.marker = "__safedeploy_end_" + os.urandom(6).hex() + "__"
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the session
        argv = [psql, "--no-psqlrc", "--no-password", "--tuples-only", "--no-align", "--quiet",
                "--set", "ON_ERROR_STOP=1"]
        try:
            self.proc = subprocess.Popen(argv, env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, umask=0o077)
        except OSError as exc:
            self._stderr.close()
            raise PgError(f"cannot run {psql}: {exc.strerror}", kind="client_missing") from exc
        self._buffer = b""
        self._stderr_text = ""

    def query(self, sql: str) -> str:
        """Run one statement; return its output (tuples only, unaligned)."""
        text = sql.strip().rstrip(";") + ";\n\\echo " + self.marker + "\n"
        try:
            self.proc.stdin.write(text.encode("utf-8"))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail()
        return self._read_until_marker()

    def query_json(self, sql: str) -> object:
        out = self.query(sql)
        try:
            return json.loads(out.strip())
        except ValueError as exc:
            raise PgError(f"unexpected psql output: {out.strip()[:200]!r}", kind="query_failed") from exc

    def _read_until_marker(self) -> str:
        import select
        import time

        end = ("\n" + self.marker + "\n").encode()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        fd = self.proc.stdout.fileno()
        while True:
            data = b"\n" + self._buffer
            at = data.find(end)
            if at >= 0:
                out, self._buffer = data[1:at + 1], data[at + len(end):]
                return out.decode("utf-8", errors="replace")
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _w, _x = select.select([fd], [], [], wait)
            if not ready:
                self.close()
                raise PgError(f"psql did not answer within {self.timeout}s", kind="timeout")
            chunk = os.read(fd, 65536)
            if not chunk:
                self._fail()
            self._buffer += chunk

    def _fail(self) -> None:
        rc = self.close()
        classified = classify_connection_error(self._stderr_text, self.target)
        if classified:
            raise classified
        raise PgError(
            f"query on {self.target['database']!r} failed: {tail(self._stderr_text) or 'rc=' + str(rc)}",
            kind="query_failed",
        )

    def close(self) -> int | None:
        """End the session (its transaction, if still open, is rolled back); return psql's exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdout.close()
        if not self._stderr.closed:
            self._stderr.seek(0)
            self._stderr_text = self._stderr.read().decode("utf-8", errors="replace")
            self._stderr.close()
        return self.proc.returncode


def quote_ident(name: str) -> str:
    """SQL identifier quoting (what quote_ident() would do, always quoting)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """SQL string literal (standard_conforming_strings, the default since PostgreSQL 9.1)."""
    return "'" + value.replace("'", "''") + "'"


# -- error classification -------------------------------------------------------------

_AUTH_PATTERNS = ("password authentication failed", "authentication failed for user")
_NO_PASSWORD_PATTERNS = ("no password supplied", "fe_sendauth: no password")
_UNREACHABLE_PATTERNS = (
    "connection refused",
    "could not connect to server",
    "could not translate host name",
    "timeout expired",
    "no route to host",
    "network is unreachable",
    "name or service not known",
    "no such file or directory\n\tis the server running",
    "is the server running",
)


def classify_connection_error(stderr: str, target: Mapping) -> PgError | None:
    """Turn libpq's stderr into a message saying what to change; None when not a connection error."""
    low = stderr.lower()
    where = f"{target['host']}:{target['port']}"
    who = f"user {target['user']!r} on database {target['database']!r} at {where}"
    if any(p in low for p in _AUTH_PATTERNS):
        return PgError(
            f"PostgreSQL authentication failed for {who}: check password / passfile "
            "(or PGPASSWORD) and the server's pg_hba.conf.",
            kind="auth_failed",
        )
    if any(p in low for p in _NO_PASSWORD_PATTERNS):
        return PgError(
            f"PostgreSQL asks for a password for {who} but none was given: "
            "set password, passfile or the PGPASSWORD environment variable.",
            kind="no_password",
        )
    m = re.search(r'database "([^"]+)" does not exist', stderr)
    if m:
        return PgError(
            f"database {m.group(1)!r} does not exist at {where}: check database.",
            kind="no_database",
        )
    m = re.search(r'role "([^"]+)" does not exist', stderr)
    if m:
        return PgError(f"PostgreSQL role {m.group(1)!r} does not exist at {where}: check user.", kind="no_role")
    if any(p in low for p in _UNREACHABLE_PATTERNS):
        return PgError(
            f"cannot reach PostgreSQL at {where} (database {target['database']!r}): "
            f"{_first_error_line(stderr)}. Check host / port, that the server runs "
            "and that it accepts TCP connections from this host.",
            kind="unreachable",
        )
    return None


def _first_error_line(stderr: str) -> str:
    for line in stderr.splitlines():
        line = line.strip()
        if line:
            line = re.sub(r"^(psql|pg_dump|pg_restore): (error: )?", "", line)
            return line.rstrip(".")
    return "no error output"


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# -- client versions and binaries -----------------------------------------------------

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def parse_client_version(output: str) -> tuple[int, int] | None:
    """``pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`` → (15, 18); old 9.6.x → (9, 6)."""
    m = _VERSION_RE.search(output)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def major_of_version_num(version_num: int) -> int:
    """server_version_num → major: 150018 → 15, 90624 → 9 (9.x majors are compared as 9)."""
    return version_num // 10000


def client_version(binary: str, runner: Runner | None = None) -> tuple[int, int] | None:
    runner = runner or (lambda argv, env: run_client(argv, env, timeout=30))
    try:
        rc, out, _err = runner([binary, "--version"], dict(os.environ))
    except PgError:
        return None
    return parse_client_version(out) if rc == 0 else None


@dataclass
class ClientTools:
    bin_dir: str
    pg_dump: str
    pg_restore: str
    version: tuple[int, int]

    @property
    def version_text(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


def candidate_bin_dirs(
    which: Callable[[str], str | None] = shutil.which, globs: Iterable[str] = CLIENT_BIN_GLOBS
) -> list[str]:
    """PATH first, then versioned installation directories, newest major first."""
    dirs: list[str] = []
    on_path = which("pg_dump")
    if on_path:
        dirs.append(os.path.dirname(on_path))
    versioned = []
    for pattern in globs:
        for path in glob.glob(pattern):
            digits = re.findall(r"\d+", path)
            versioned.append((int(digits[-1]) if digits else 0, path))
    for _major, path in sorted(versioned, reverse=True):
        if path not in dirs:
            dirs.append(path)
    return dirs


def select_client_tools(
    server_major: int,
    server_version: str,
    bin_dir: str | None = None,
    candidates: Iterable[str] | None = None,
    version_of: Callable[[str], tuple[int, int] | None] = client_version,
) -> ClientTools:
    """Pick pg_dump/pg_restore whose major is >= the server's: pg_dump refuses newer servers."""
    wanted = f"PostgreSQL {server_major} or newer"
    if candidates is None:
        candidates = [] if bin_dir else candidate_bin_dirs()
    dirs = [bin_dir] if bin_dir else list(candidates)
    found: list[str] = []
    for directory in dirs:
        pg_dump = os.path.join(directory, "pg_dump")
        pg_restore = os.path.join(directory, "pg_restore")
        if not (os.access(pg_dump, os.X_OK) and os.access(pg_restore, os.X_OK)):
            if bin_dir:
                raise PgError(
                    f"bin_dir {bin_dir} does not contain executable pg_dump and pg_restore: "
                    "point it at a PostgreSQL client bin directory (e.g. /usr/lib/postgresql/"
                    f"{server_major}/bin).",
                    kind="client_missing",
                )
            continue
        version = version_of(pg_dump)
        if version is None:
            found.append(f"{pg_dump} (version unknown)")
            continue
        if version[0] >= server_major:
            return ClientTools(directory, pg_dump, pg_restore, version)
        found.append(f"{pg_dump} {version[0]}.{version[1]}")
    if not found:
        raise PgError(
            "pg_dump/pg_restore not found on PATH nor in /usr/lib/postgresql/*/bin: install the "
            f"PostgreSQL client for {wanted} (e.g. apt-get install postgresql-client-{server_major}) "
            "or set bin_dir.",
            kind="client_missing",
        )
    raise PgError(
        f"pg_dump is older than the server ({server_version}): found {', '.join(found)}. "
        f"pg_dump cannot dump a newer server; install the client for {wanted} "
        f"(e.g. apt-get install postgresql-client-{server_major}) and/or set bin_dir to its bin directory.",
        kind="client_too_old",
    )


def find_psql(bin_dir: str | None = None, which: Callable[[str], str | None] = shutil.which) -> str:
    """Any psql will do for probing the server: it talks to newer servers fine."""
    dirs = [bin_dir] if bin_dir else []
    dirs += [d for d in candidate_bin_dirs(which) if d not in dirs]
    for directory in dirs:
        path = os.path.join(directory, "psql")
        if os.access(path, os.X_OK):
            return path
    found = which("psql")
    if found:
        return found
    raise PgError(
        "psql not found (needed to check the server before dumping): install the PostgreSQL client "
        "(e.g. apt-get install postgresql-client) or set bin_dir.",
        kind="client_missing",
    )


# -- probing the server ----------------------------------------------------------------

PROBE_SQL = """
SELECT json_build_object(
  'server_version', current_setting('server_version'),
  'server_version_num', current_setting('server_version_num')::int,
  'current_user', current_user,
  'current_database', current_database(),
  'server_addr', host(inet_server_addr()),
  'server_port', inet_server_port(),
  'in_recovery', pg_is_in_recovery(),
  'system_identifier', CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')
                       THEN (SELECT system_identifier::text FROM pg_control_system()) END,
  'table_count', (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind IN ('r', 'p')
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'),
  'has_django_migrations', to_regclass('django_migrations') IS NOT NULL,
  'can_create_db', (SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user),
  'encoding', (SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()),
  'datcollate', (SELECT datcollate FROM pg_database WHERE datname = current_database()),
  'datctype', (SELECT datctype FROM pg_database WHERE datname = current_database())
)
"""

MIGRATIONS_SQL = "SELECT coalesce(json_agg(app || '.' || name ORDER BY id), '[]') FROM django_migrations"


def psql_argv(psql: str, sql: str) -> list[str]:
    """psql command line: connection settings come from the environment, never from here."""
    return [psql, "--no-psqlrc", "--no-password", "--tuples-only", "--no-align", "--quiet",
            "--set", "ON_ERROR_STOP=1", "--command", sql]


def psql_json(psql: str, sql: str, env: Mapping[str, str], target: Mapping, runner: Runner) -> object:
    rc, out, err = runner(psql_argv(psql, sql), env)
    if rc != 0:
        classified = classify_connection_error(err, target)
        if classified:
            raise classified
        raise PgError(f"query on {target['database']!r} failed: {tail(err) or 'rc=' + str(rc)}", kind="query_failed")
    try:
        return json.loads(out.strip())
    except ValueError as exc:
        raise PgError(f"unexpected psql output: {out.strip()[:200]!r}", kind="query_failed") from exc


def probe_server(psql: str, env: Mapping[str, str], target: Mapping, runner: Runner) -> dict:
    """Connect once (auth and reachability errors surface here, before any file is written)."""
    info = psql_json(psql, PROBE_SQL, env, target, runner)
    info["applied_migrations"] = (
        psql_json(psql, MIGRATIONS_SQL, env, target, runner) if info.get("has_django_migrations") else []
    )
    return info
