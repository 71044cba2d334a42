# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verified pg_dump snapshots: the logic behind safedeploy.django.pg_snapshot.

Private module. A snapshot named N in directory D is three things, all private
(files 0600, directories 0700):

- the archive: ``D/N.dump`` (pg_dump custom format) or ``D/N.dir/`` (directory format)
- ``D/N.dump.sha256`` / ``D/N.dir.sha256``: checksums in ``sha256sum`` format (one line
  for the custom format; one line per file of the directory, sorted, for the directory
  format -- the snapshot's sha256 is then the sha256 of that listing)
- ``D/N.json``: the manifest (where it came from, checksum, tables, migrations, ...)

The archive is written to the hidden ``D/.N.dump.partial`` (``D/.N.dir.partial``) and
renamed only after it has been verified; the manifest is written last. A failure removes
everything it wrote, so an archive name without ``.partial`` next to a manifest is always
a complete, verified snapshot.

``state=restored`` loads a snapshot back with ``pg_restore --single-transaction``; the
``command`` provider asks an external program (a managed database's snapshot API) instead
of running pg_dump.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ansible_collections.safedeploy.django.plugins.module_utils._pg import (
    MIGRATIONS_SQL,
    Connection,
    PgError,
    PsqlSession,
    Runner,
    classify_connection_error,
    find_psql,
    probe_server,
    psql_argv,
    psql_json,
    quote_ident,
    quote_literal,
    run_client,
    select_client_tools,
    tail,
)
from ansible_collections.safedeploy.django.plugins.module_utils._secrets import scrub

COLLECTION = "safedeploy.django"
KIND = "pg_snapshot"
MANIFEST_VERSION = 2
FORMATS = ("custom", "directory")
_EXT = {"custom": "dump", "directory": "dir"}
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
SCRATCH_MARK = "_sdverify_"
# pg_restore --list entries: "<dumpId>; <tableoid> <oid> <desc> <schema> <tag> <owner>"
_TABLE_ENTRY_RE = re.compile(r"^\d+;\s+\d+\s+\d+\s+TABLE\s+(?!DATA\s)(\S+)\s+(.+?)\s+(\S+)\s*$")
_HEADER_RE = re.compile(r"^;\s+(Dumped from database version|Dumped by pg_dump version|dbname):\s*(.*?)\s*$")
_AGE_PART_RE = re.compile(r"(\d+)\s*([smhdw])")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
PROVIDER_FAILED_STATUSES = ("failed", "error", "deleted", "deleting")
_PLACEHOLDER_RE = re.compile(r"\{(name|database|host|port|user|id)\}")

# User tables pg_dump dumps as TABLE entries: ordinary and partitioned tables outside the
# system schemas, not members of an extension (those are the extension's business).
TABLES_SQL = r"""
SELECT coalesce(json_agg(json_build_object('schema', n.nspname, 'name', c.relname,
                                           'estimate', c.reltuples::bigint)
                         ORDER BY n.nspname, c.relname), '[]')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
"""
HAS_MIGRATIONS_SQL = "SELECT to_json(to_regclass('django_migrations') IS NOT NULL)"


@dataclass(frozen=True)
class SnapshotPaths:
    dest: str
    name: str
    fmt: str = "custom"

    @property
    def archive(self) -> str:
        return os.path.join(self.dest, f"{self.name}.{_EXT[self.fmt]}")

    @property
    def dump(self) -> str:  # the name used before the directory format existed
        return self.archive

    @property
    def partial(self) -> str:
        return os.path.join(self.dest, f".{self.name}.{_EXT[self.fmt]}.partial")

    @property
    def sha256(self) -> str:
        return self.archive + ".sha256"

    @property
    def manifest(self) -> str:
        return os.path.join(self.dest, f"{self.name}.json")


def _utcnow() -> datetime.datetime:
    # datetime.UTC needs Python 3.11; managed hosts may run an older Python.
    return datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017


def default_name(database: str, now: datetime.datetime | None = None) -> str:
    now = now or _utcnow()
    safe_db = re.sub(r"[^A-Za-z0-9._-]", "_", database)
    return f"{safe_db}-{now.strftime('%Y%m%dT%H%M%SZ')}"


def validate_name(name: str) -> None:
    if not NAME_RE.fullmatch(name) or name.endswith(".partial"):
        raise PgError(
            f"name {name!r} is not a usable snapshot name: use letters, digits, '.', '_' and '-' "
            "only, starting with a letter or digit (it becomes a file name in dest).",
            kind="bad_name",
        )


# -- pure helpers (unit tested) ---------------------------------------------------------

def parse_max_age(value) -> int | None:
    """``"6h"``, ``"30m"``, ``"2d"``, ``"1h30m"``, ``"90s"``, ``"1w"`` or a number of seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise PgError(f"max_age {value!r} is not a duration: use seconds or e.g. 30m, 6h, 2d.", kind="bad_option")
    if isinstance(value, (int, float)):
        seconds = int(value)
    else:
        text = str(value).strip().lower()
        if text.isdigit():
            seconds = int(text)
        elif re.fullmatch(r"(\d+\s*[smhdw]\s*)+", text):
            seconds = sum(int(n) * _AGE_UNITS[u] for n, u in _AGE_PART_RE.findall(text))
        else:
            raise PgError(
                f"max_age {value!r} is not a duration: use seconds or a number with a unit "
                "s, m, h, d or w (e.g. 30m, 6h, 2d, 1h30m).",
                kind="bad_option",
            )
    if seconds < 0:
        raise PgError(f"max_age {value!r} must not be negative.", kind="bad_option")
    return seconds


def dump_argv(pg_dump: str, partial_path: str, fmt: str = "custom", jobs: int = 1, compress: int | None = None,
              snapshot_id: str | None = None) -> list[str]:
    """pg_dump command line. Connection settings and the password travel in the environment."""
    argv = [pg_dump, f"--format={fmt}", "--no-password", "--file", partial_path]
    if jobs and jobs > 1:
        argv.append(f"--jobs={jobs}")
    if compress is not None:
        argv.append(f"--compress={compress}")
    if snapshot_id:
        argv.append(f"--snapshot={snapshot_id}")
    return argv


def restore_list_argv(pg_restore: str, archive: str) -> list[str]:
    return [pg_restore, "--list", archive]


def restore_read_argv(pg_restore: str, archive: str) -> list[str]:
    """Read every data block of the archive (restoring into /dev/null): catches truncation."""
    return [pg_restore, "--file", os.devnull, archive]


def dbname_arg(database: str) -> str:
    """``--dbname`` value for a plain database name (a name with ``=`` would be read as a conninfo)."""
    if "=" in database or database.startswith(("postgres://", "postgresql://")):
        return "dbname='" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return database


def restore_argv(pg_restore: str, archive: str, database: str) -> list[str]:
    """Restore into the target: all or nothing (one transaction), stop at the first error."""
    return [pg_restore, "--clean", "--if-exists", "--single-transaction", "--no-owner", "--exit-on-error",
            "--no-password", "--dbname", dbname_arg(database), archive]


def scratch_restore_argv(pg_restore: str, archive: str, scratch: str, jobs: int = 1) -> list[str]:
    """Restore into the scratch database: data and schema, not owners nor grants."""
    argv = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--no-password",
            "--dbname", dbname_arg(scratch)]
    if jobs and jobs > 1:
        argv.append(f"--jobs={jobs}")
    return argv + [archive]


def scratch_name(database: str, token: str | None = None) -> str:
    """``<db>_sdverify_<random>``, a plain identifier of at most 63 bytes."""
    token = token or os.urandom(4).hex()
    safe = re.sub(r"[^a-z0-9_]", "_", database.lower())[: 63 - len(SCRATCH_MARK) - len(token)]
    return f"{safe}{SCRATCH_MARK}{token}"


def parse_restore_list(text: str) -> dict:
    """Tables and header facts from ``pg_restore --list`` output."""
    tables = []
    header = {}
    for line in text.splitlines():
        m = _TABLE_ENTRY_RE.match(line)
        if m:
            tables.append(f"{m.group(1)}.{m.group(2)}")
            continue
        m = _HEADER_RE.match(line)
        if m:
            header[m.group(1)] = m.group(2)
    return {
        "tables": tables,
        "server_version": header.get("Dumped from database version"),
        "pg_dump_version": header.get("Dumped by pg_dump version"),
        "dbname": header.get("dbname"),
    }


def table_names(tables: Iterable[Mapping]) -> list[str]:
    return [f"{t['schema']}.{t['name']}" for t in tables]


def count_sql(tables: list[Mapping]) -> str:
    """One statement (one snapshot) counting the rows of every table, in the order given."""
    parts = [f"(SELECT count(*) FROM {quote_ident(t['schema'])}.{quote_ident(t['name'])})" for t in tables]
    return "SELECT array_to_json(ARRAY[" + ", ".join(parts) + "]::bigint[])"


def counts_by_table(tables: list[Mapping], values) -> dict:
    if not isinstance(values, list) or len(values) != len(tables):
        raise PgError(f"unexpected answer to the row count query: {str(values)[:200]}", kind="query_failed")
    # lengths checked above; zip(strict=) needs Python 3.10, managed hosts may be older
    return {name: int(value) for name, value in zip(table_names(tables), values)}  # noqa: B905


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def format_sha256_line(digest: str, filename: str) -> str:
    """Same format as ``sha256sum`` so ``sha256sum -c`` works in the snapshot directory."""
    return f"{digest}  {filename}\n"


def parse_sha256_line(text: str) -> tuple[str, str] | None:
    m = re.match(r"^([0-9a-fA-F]{64})\s+\*?(\S.*?)\s*$", text.strip().splitlines()[0] if text.strip() else "")
    return (m.group(1).lower(), m.group(2)) if m else None


def directory_listing(path: str, label: str) -> tuple[str, int]:
    """``sha256sum`` lines of every file under ``path`` (named ``label/<relative path>``), sorted by name.

    The snapshot's sha256 for the directory format is the sha256 of this text, so it covers
    every file's content and name. Returns (text, total size)."""
    entries = []
    total = 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for fname in files:
            full = os.path.join(root, fname)
            if os.path.islink(full) or not os.path.isfile(full):
                raise PgError(f"{full} is not a regular file: not a pg_dump directory archive.", kind="corrupt")
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            entries.append((rel, full))
            total += os.path.getsize(full)
    entries.sort()
    text = "".join(format_sha256_line(sha256_of(full), f"{label}/{rel}") for rel, full in entries)
    return text, total


def archive_digest(path: str, fmt: str, label: str) -> tuple[str, int, str]:
    """(sha256, size, content of the .sha256 file) of an archive (file or directory)."""
    if fmt == "directory":
        text, size = directory_listing(path, label)
        return hashlib.sha256(text.encode("utf-8")).hexdigest(), size, text
    digest = sha256_of(path)
    return digest, os.path.getsize(path), format_sha256_line(digest, label)


def dump_failure_message(rc: int, stderr: str, target: Mapping, tools_version: str, dest: str = "") -> PgError:
    classified = classify_connection_error(stderr, target)
    if classified:
        return classified
    if "server version mismatch" in stderr:
        return PgError(
            f"pg_dump {tools_version} refused the server: {tail(stderr, 3)}. "
            "Set bin_dir to the client binaries of the server's major version or newer.",
            kind="client_too_old",
        )
    if "no space left on device" in stderr.lower():
        return PgError(
            f"dest {dest} is full (No space left on device) and pg_dump could not finish; no snapshot was "
            "written. Free space there or choose another dest.",
            kind="dest_full",
        )
    how = f"was killed by signal {-rc}" if rc < 0 else f"failed (rc={rc})"
    if rc in (128 + 9, 128 + 15):
        how += f" (probably killed by signal {rc - 128})"
    return PgError(
        f"pg_dump {how}; no snapshot was written. pg_dump said: {tail(stderr) or '(nothing)'}",
        kind="dump_failed",
    )


def stderr_errors(stderr: str) -> list[str]:
    """pg_dump may print warnings and still succeed; lines with 'error' mean the dump is not trustworthy."""
    return [line for line in stderr.splitlines() if re.search(r"\berror\b|\bfatal\b", line, re.IGNORECASE)]


def render_command(template: list, values: Mapping[str, object]) -> list[str]:
    """Replace ``{name}``, ``{database}``, ``{host}``, ``{port}``, ``{user}``, ``{id}`` in each argument.

    Other braces are left alone (so JSON in an argument survives). No shell is involved."""
    def one(arg) -> str:
        return _PLACEHOLDER_RE.sub(lambda m: str(values.get(m.group(1), m.group(0))), str(arg))

    return [one(arg) for arg in template]


def parse_provider_output(stdout: str, what: str) -> dict:
    """The last non-empty line of a provider command's stdout must be a JSON object."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise PgError(f"{what} printed nothing; its last line of output must be a JSON object.",
                      kind="provider_failed")
    try:
        data = json.loads(lines[-1])
    except ValueError as exc:
        raise PgError(f"the last line of {what}'s output is not JSON: {lines[-1][:200]!r}",
                      kind="provider_failed") from exc
    if not isinstance(data, dict):
        raise PgError(f"the last line of {what}'s output is not a JSON object: {lines[-1][:200]!r}",
                      kind="provider_failed")
    return data


def fingerprint_of(target: Mapping, server: Mapping) -> dict:
    return {
        "host": target["host"],
        "port": target["port"],
        "database": target["database"],
        "user": target["user"],
        "server_version": server.get("server_version"),
        "server_version_num": server.get("server_version_num"),
        "system_identifier": server.get("system_identifier"),
        "in_recovery": server.get("in_recovery"),
    }


def manifest_fingerprint(manifest: Mapping) -> dict:
    fp = manifest.get("fingerprint")
    if isinstance(fp, dict):
        return fp
    return {k: manifest.get(k) for k in ("host", "port", "database", "user", "system_identifier")}  # manifest v1


def same_target(recorded: Mapping, current: Mapping) -> tuple[bool, str]:
    """Same database of the same cluster? (system identifier + database name).

    A streaming replica shares its primary's system identifier, so a snapshot taken from a
    replica matches the primary. When either side's system identifier is unknown (the
    user may not run pg_control_system()), host and port stand in for it."""
    if recorded.get("database") != current.get("database"):
        return False, f"database {recorded.get('database')!r} is not {current.get('database')!r}"
    a, b = recorded.get("system_identifier"), current.get("system_identifier")
    if a and b:
        if str(a) != str(b):
            return False, f"system identifier {a} is not {b} (another PostgreSQL cluster)"
        return True, "same system identifier and database"
    where_a = f"{recorded.get('host')}:{recorded.get('port')}"
    where_b = f"{current.get('host')}:{current.get('port')}"
    if where_a != where_b:
        return False, f"server {where_a} is not {where_b} (system identifier unknown)"
    return True, "same host, port and database (system identifier unknown)"


def parse_created(text) -> datetime.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)  # noqa: UP017
    return value


def is_our_manifest(manifest) -> bool:
    if not isinstance(manifest, dict):
        return False
    if manifest.get("collection") == COLLECTION and manifest.get("kind") == KIND:
        return True
    # manifest version 1 (collection 0.1): no collection/kind keys, "format": 1
    return manifest.get("format") == 1 and "sha256" in manifest and "table_names" in manifest


def manifest_format(manifest: Mapping) -> str:
    fmt = manifest.get("format")
    return fmt if fmt in FORMATS else "custom"


def is_provider_snapshot(manifest: Mapping) -> bool:
    return manifest.get("provider") == "command"


# -- filesystem -----------------------------------------------------------------------------

def _write_private(path: str, data: str) -> None:
    """Write atomically (temp + rename), mode 0600 from the first byte."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: str) -> None:
    """Remove a file or a directory tree; missing is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_dest_usable(dest: str) -> bool:
    """Without writing anything: can dest be used? Returns whether it must be created."""
    if os.path.exists(dest):
        if not os.path.isdir(dest):
            raise PgError(f"dest {dest} exists and is not a directory: choose a directory.", kind="dest")
        if not os.access(dest, os.W_OK | os.X_OK):
            raise PgError(_not_writable(dest), kind="dest")
        return False
    existing = _nearest_existing(os.path.dirname(dest))
    if not os.path.isdir(existing):
        raise PgError(f"cannot create dest {dest}: {existing} is not a directory.", kind="dest")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PgError(_not_writable(existing, creating=dest), kind="dest")
    return True


def _not_writable(path: str, creating: str | None = None) -> str:
    what = f"cannot create dest {creating}: {path}" if creating else f"dest {path}"
    return (
        f"{what} is not writable by uid {os.geteuid()}: choose a directory this user can write, "
        "fix its ownership or mount, or run the task with become."
    )


def ensure_dest(dest: str) -> bool:
    """Create dest (mode 0700) if needed; True if created."""
    must_create = check_dest_usable(dest)
    if not must_create:
        return False
    try:
        os.makedirs(dest, mode=0o700)
        os.chmod(dest, 0o700)
    except OSError as exc:
        raise PgError(f"cannot create dest {dest}: {exc.strerror}.", kind="dest") from exc
    return True


def _open_partial(path: str, fmt: str) -> None:
    """Create the partial file (0600) or directory (0700) ourselves, so pg_dump writes into a private one."""
    _remove(path)  # left over by a run that was killed
    try:
        if fmt == "directory":
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
    except OSError as exc:
        raise PgError(f"cannot write in dest {os.path.dirname(path)}: {exc.strerror}.", kind="dest") from exc


def _make_private(path: str) -> None:
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o700)
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o700)
            for f in files:
                os.chmod(os.path.join(root, f), 0o600)
    else:
        os.chmod(path, 0o600)


def read_manifest(path: str) -> dict | None:
    """The manifest at ``path`` if it is one of ours, else None."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if is_our_manifest(data) else None


def list_snapshots(dest: str) -> list[tuple[str, dict]]:
    """(name, manifest) of every snapshot of this collection in dest (files without one are ignored)."""
    found = []
    try:
        entries = sorted(os.listdir(dest))
    except OSError:
        return []
    for entry in entries:
        if not entry.endswith(".json") or entry.startswith("."):
            continue
        name = entry[: -len(".json")]
        if not NAME_RE.fullmatch(name):
            continue
        manifest = read_manifest(os.path.join(dest, entry))
        if manifest is None or manifest.get("name", name) != name:
            continue
        found.append((name, manifest))
    return found


def _sort_key(dest: str, name: str, manifest: Mapping) -> tuple:
    created = parse_created(manifest.get("created"))
    try:
        mtime = os.stat(os.path.join(dest, f"{name}.json")).st_mtime_ns
    except OSError:
        mtime = 0
    return (created.timestamp() if created else 0.0, mtime, name)


# -- reading the database -------------------------------------------------------------------

def _psql_exec(psql: str, sql: str, env, target, runner: Runner, kind: str) -> str:
    rc, out, err = runner(psql_argv(psql, sql), env)
    if rc != 0:
        classified = classify_connection_error(err, target)
        if classified:
            raise classified
        raise PgError(f"{sql.split()[0]} ... failed: {tail(err) or 'rc=' + str(rc)}", kind=kind)
    return out


def gather_facts(query_json: Callable[[str], object], want_counts: bool) -> dict:
    """Tables, applied migrations and (optionally) exact row counts, as one reader sees them."""
    tables = query_json(TABLES_SQL) or []
    migrations = query_json(MIGRATIONS_SQL) if query_json(HAS_MIGRATIONS_SQL) else []
    counts = None
    if want_counts:
        counts = {}
        if tables:
            counts = counts_by_table(tables, query_json(count_sql(tables)))
    return {"tables": tables, "applied_migrations": migrations or [], "row_counts": counts}


def _open_dump_session(psql, env, target, server, session_factory, warnings: list):
    """A psql session holding a repeatable-read transaction whose snapshot pg_dump will share.

    Returns (session, snapshot id) or (None, None) when the server cannot export one; then
    the facts are read just before the dump, in a separate transaction."""
    if session_factory is None:
        return None, None
    session = None
    try:
        session = session_factory(psql, env, target)
        if (server.get("server_version_num") or 0) >= 90600:
            session.query("SET idle_in_transaction_session_timeout = 0")
        session.query("SET statement_timeout = 0")
        session.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot_id = session.query("SELECT pg_export_snapshot()").strip()
        if not re.fullmatch(r"[0-9A-Fa-f-]+", snapshot_id):
            raise PgError(f"unexpected snapshot id {snapshot_id!r}", kind="query_failed")
        return session, snapshot_id
    except PgError as exc:
        if session is not None:
            session.close()
        if exc.kind in ("auth_failed", "no_password", "unreachable", "no_database", "no_role"):
            raise
        warnings.append(
            f"could not export a snapshot for pg_dump ({exc.message}); tables, migrations and row counts "
            "were read just before the dump instead of in the dump's own snapshot."
        )
        return None, None


# -- verification ---------------------------------------------------------------------------

def verify_archive(tools_restore: str, archive: str, env: Mapping[str, str], runner: Runner,
                   read_data: bool) -> dict:
    rc, out, err = runner(restore_list_argv(tools_restore, archive), env)
    if rc != 0:
        raise PgError(
            f"pg_restore --list cannot read {archive}: {tail(err) or 'rc=' + str(rc)}", kind="verify_failed"
        )
    listing = parse_restore_list(out)
    if read_data:
        rc, _out, err = runner(restore_read_argv(tools_restore, archive), env)
        if rc != 0:
            raise PgError(
                f"pg_restore cannot read the data in {archive} (truncated or corrupt archive): "
                f"{tail(err) or 'rc=' + str(rc)}",
                kind="verify_failed",
            )
    return listing


def verify_checksum(paths: SnapshotPaths, manifest: Mapping | None) -> tuple[str, int]:
    """Recompute the archive's sha256 and compare it with the .sha256 file and the manifest."""
    label = os.path.basename(paths.archive)
    if not os.path.exists(paths.archive):
        raise PgError(f"snapshot {paths.name}: its archive {paths.archive} is missing.", kind="corrupt")
    if not os.path.exists(paths.sha256):
        raise PgError(
            f"{paths.archive} exists but {paths.sha256} is missing, so it cannot be verified: "
            "remove the snapshot or choose another name.",
            kind="corrupt",
        )
    with open(paths.sha256, encoding="utf-8") as handle:
        recorded_text = handle.read()
    actual, size, actual_text = archive_digest(paths.archive, paths.fmt, label)
    if paths.fmt == "directory":
        recorded = hashlib.sha256(recorded_text.encode("utf-8")).hexdigest()
        if recorded_text != actual_text:
            differ = sorted(set(recorded_text.splitlines()) ^ set(actual_text.splitlines()))
            files = sorted({line.split("  ", 1)[-1] for line in differ})
            raise PgError(
                f"snapshot {paths.archive} is corrupted: these files differ from {paths.sha256}: "
                f"{', '.join(files[:10])}. It will not be reused: move it away or choose another name.",
                kind="corrupt",
            )
    else:
        parsed = parse_sha256_line(recorded_text)
        if parsed is None:
            raise PgError(f"{paths.sha256} is not in sha256sum format: remove the snapshot or choose another name.",
                          kind="corrupt")
        recorded = parsed[0]
        if actual != recorded:
            raise PgError(
                f"snapshot {paths.archive} is corrupted: its sha256 is {actual} but {paths.sha256} records "
                f"{recorded}. It will not be reused: move it away or choose another name.",
                kind="corrupt",
            )
    if manifest and manifest.get("sha256") and manifest["sha256"] != actual:
        raise PgError(
            f"snapshot {paths.archive} does not match its manifest: sha256 {actual}, manifest {paths.manifest} "
            f"records {manifest['sha256']}. It will not be reused: move it away or choose another name.",
            kind="corrupt",
        )
    return actual, size


def find_by_name(dest: str, name: str) -> tuple[SnapshotPaths, dict | None] | None:
    """The snapshot called ``name`` in dest: (paths, manifest or None), or None if there is none."""
    manifest_path = os.path.join(dest, f"{name}.json")
    manifest = read_manifest(manifest_path) if os.path.exists(manifest_path) else None
    if manifest is not None:
        return SnapshotPaths(dest, name, manifest_format(manifest)), manifest
    for fmt in FORMATS:
        paths = SnapshotPaths(dest, name, fmt)
        if os.path.exists(paths.archive):
            return paths, None
    return None


# -- the operation ----------------------------------------------------------------------------

@dataclass
class Context:
    params: Mapping
    check_mode: bool
    runner: Runner
    which: Callable[[str], str | None]
    select_tools: Callable
    session_factory: Callable | None
    sleep: Callable[[float], None]
    now_dt: datetime.datetime
    conn: Connection
    env: dict
    target: dict
    secrets: list
    started: float
    warnings: list

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)


def validate_params(params: Mapping) -> None:
    fmt = params.get("format") or "custom"
    jobs = 1 if params.get("jobs") is None else params["jobs"]
    if fmt not in FORMATS:
        raise PgError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}.", kind="bad_option")
    if jobs < 1:
        raise PgError(f"jobs must be 1 or more, not {jobs}.", kind="bad_option")
    if jobs > 1 and fmt != "directory":
        raise PgError(
            f"jobs: {jobs} needs format: directory (pg_dump dumps in parallel only into a directory); "
            "set format: directory or leave jobs at 1.",
            kind="bad_option",
        )
    compress = params.get("compress")
    if compress is not None and not 0 <= compress <= 9:
        raise PgError(f"compress must be between 0 (none) and 9 (best), not {compress}.", kind="bad_option")
    keep = params.get("keep")
    if keep is not None and keep < 1:
        raise PgError(f"keep must be 1 or more (the snapshot just taken always stays), not {keep}.",
                      kind="bad_option")
    parse_max_age(params.get("max_age"))
    if (params.get("provider") or "pg_dump") == "command":
        missing = [o for o in ("provider_command", "provider_check_command") if not params.get(o)]
        if missing:
            raise PgError(f"provider: command needs {' and '.join(missing)}.", kind="bad_option")
        if params.get("test_restore"):
            raise PgError("test_restore needs a pg_dump archive: it cannot be used with provider: command.",
                          kind="bad_option")


def snapshot(params: Mapping, check_mode: bool, runner: Runner = run_client,
             now: Callable[[], datetime.datetime] | None = None,
             which: Callable[[str], str | None] | None = None,
             select_tools=select_client_tools,
             session_factory: Callable | None = PsqlSession,
             sleep: Callable[[float], None] = time.sleep) -> dict:
    """Take, reuse or restore the snapshot described by the module params; returns the module result."""
    conn = Connection.from_params(params)
    ctx = Context(
        params=params, check_mode=check_mode, runner=runner, which=which or shutil.which,
        select_tools=select_tools, session_factory=session_factory, sleep=sleep,
        now_dt=(now or _utcnow)(), conn=conn, env=conn.child_env(), target=conn.describe(),
        secrets=conn.secrets(), started=time.monotonic(), warnings=[],
    )
    try:
        validate_params(params)
        result = _restore(ctx) if (params.get("state") or "present") == "restored" else _present(ctx)
    except PgError as exc:
        exc.message = scrub(exc.message, ctx.secrets)
        exc.details = scrub(exc.details, ctx.secrets)
        if ctx.warnings:
            exc.details.setdefault("warnings", scrub(ctx.warnings, ctx.secrets))
        raise
    if ctx.warnings:
        result["warnings"] = scrub(ctx.warnings, ctx.secrets)
    return scrub(result, ctx.secrets)


def _present(ctx: Context) -> dict:
    params = ctx.params
    name = params.get("name") or default_name(ctx.conn.database, ctx.now_dt)
    validate_name(name)
    dest = os.path.abspath(params["dest"])
    fmt = params.get("format") or "custom"
    provider = params.get("provider") or "pg_dump"
    paths = SnapshotPaths(dest, name, fmt)
    result = {
        "changed": False,
        "reused": False,
        "name": name,
        "format": fmt if provider == "pg_dump" else "provider",
        "path": paths.archive if provider == "pg_dump" else paths.manifest,
        "sha256_path": paths.sha256 if provider == "pg_dump" else None,
        "manifest_path": paths.manifest,
        "target": ctx.target,
        "pruned": [],
    }

    existing = find_by_name(dest, name)
    if existing is not None:
        return _reuse(ctx, result, existing[0], existing[1], by_name=True)

    check_dest_usable(dest)
    psql = find_psql(params.get("bin_dir"), which=ctx.which)
    server = probe_server(psql, ctx.env, ctx.target, ctx.runner)
    fingerprint = fingerprint_of(ctx.target, server)
    result["server_version"] = server["server_version"]
    if params.get("test_restore") and not server.get("can_create_db"):
        raise _no_createdb(ctx)

    max_age = parse_max_age(params.get("max_age"))
    if max_age is not None:
        for cand_name, cand_manifest in _young_candidates(ctx, dest, fingerprint, max_age, provider):
            cand_paths = SnapshotPaths(dest, cand_name, manifest_format(cand_manifest))
            try:
                cand_result = dict(result, name=cand_name, manifest_path=cand_paths.manifest,
                                   path=cand_paths.archive if provider == "pg_dump" else cand_paths.manifest,
                                   sha256_path=cand_paths.sha256 if provider == "pg_dump" else None)
                return _reuse(ctx, cand_result, cand_paths, cand_manifest, by_name=False, psql=psql, server=server)
            except PgError as exc:
                if exc.kind not in ("corrupt", "verify_failed", "provider_failed", "provider_not_available"):
                    raise
                ctx.warnings.append(
                    f"snapshot {cand_name} in {dest} is younger than max_age but failed verification, so it "
                    f"was not reused (a new snapshot is taken instead): {exc.message}"
                )

    if provider == "command":
        return _provider_snapshot(ctx, result, paths, psql, server, fingerprint)

    tools = ctx.select_tools(
        server_major=server["server_version_num"] // 10000,
        server_version=server["server_version"],
        bin_dir=params.get("bin_dir"),
    )
    jobs = params.get("jobs") or 1
    result.update(
        bin_dir=tools.bin_dir,
        command=dump_argv(tools.pg_dump, paths.partial, fmt, jobs, params.get("compress")),
    )
    if ctx.check_mode:
        result.update(changed=True, duration=ctx.elapsed())
        result["pruned"] = _prune(ctx, dest, name, fingerprint, dry_run=True)
        return result

    result["dest_created"] = ensure_dest(dest)
    manifest, listing, digest, size, test = _take(ctx, tools, paths, psql, server, fingerprint, result)
    result.update(
        changed=True,
        sha256=digest,
        size=size,
        tables=listing["tables"],
        manifest=manifest,
        applied_migrations=manifest["applied_migrations"],
    )
    if test is not None:
        result["test_restore"] = test
    if not listing["tables"]:
        ctx.warnings.append(f"database {ctx.conn.database!r} has no tables: the snapshot holds an empty schema.")
    result["pruned"] = _prune(ctx, dest, name, fingerprint, dry_run=False)
    result["duration"] = ctx.elapsed()
    return result


def _no_createdb(ctx: Context) -> PgError:
    return PgError(
        f"test_restore creates a scratch database, but user {ctx.target['user']!r} lacks the CREATEDB right: "
        f"grant it (ALTER ROLE {ctx.target['user']} CREATEDB) or set test_restore: false.",
        kind="no_createdb",
    )


def _young_candidates(ctx: Context, dest: str, fingerprint: Mapping, max_age: int, provider: str):
    """Snapshots of the same target younger than max_age, newest first."""
    found = []
    now = ctx.now_dt
    for name, manifest in list_snapshots(dest):
        if is_provider_snapshot(manifest) != (provider == "command"):
            continue
        if not same_target(manifest_fingerprint(manifest), fingerprint)[0]:
            continue
        created = parse_created(manifest.get("created"))
        if created is None:
            continue
        age = (now - created).total_seconds()
        if -60 <= age <= max_age:
            found.append((name, manifest))
    found.sort(key=lambda item: _sort_key(dest, item[0], item[1]), reverse=True)
    return found


def _reuse(ctx: Context, result: dict, paths: SnapshotPaths, manifest: dict | None, by_name: bool,
           psql: str | None = None, server: dict | None = None) -> dict:
    """Re-verify an existing snapshot and report it as reused (changed=false)."""
    params = ctx.params
    read_data = params.get("verify_data", True)
    if manifest is not None and is_provider_snapshot(manifest):
        _provider_check(ctx, manifest, result["name"])
        result.update(reused=True, manifest=manifest, provider_id=manifest.get("provider_id"),
                      path=paths.manifest, sha256_path=None, format="provider",
                      applied_migrations=manifest.get("applied_migrations") or [])
    else:
        digest, size = verify_checksum(paths, manifest)
        restore_tool = _existing_tools_restore(params.get("bin_dir"), ctx.which)
        if restore_tool:
            listing = verify_archive(restore_tool, paths.archive, ctx.env, ctx.runner, read_data)
        else:
            listing = {"tables": (manifest or {}).get("table_names", [])}
        result.update(reused=True, sha256=digest, size=size, tables=listing["tables"], manifest=manifest or {},
                      format=paths.fmt, path=paths.archive, sha256_path=paths.sha256,
                      applied_migrations=(manifest or {}).get("applied_migrations") or [])
    if manifest:
        created = parse_created(manifest.get("created"))
        if created is not None:
            result["age_seconds"] = int((ctx.now_dt - created).total_seconds())
    if params.get("test_restore") and not is_provider_snapshot(manifest or {}):
        if psql is None:
            psql = find_psql(params.get("bin_dir"), which=ctx.which)
            server = probe_server(psql, ctx.env, ctx.target, ctx.runner)
        if not server.get("can_create_db"):
            raise _no_createdb(ctx)
        if not ctx.check_mode:
            tools = ctx.select_tools(server_major=server["server_version_num"] // 10000,
                                     server_version=server["server_version"], bin_dir=params.get("bin_dir"))
            manifest = manifest or {}
            tables = [_split_table(t) for t in manifest.get("table_names") or result["tables"]]
            result["test_restore"] = _test_restore(ctx, tools, psql, server, paths.archive, paths.fmt, tables,
                                                   manifest.get("row_counts"))
    fingerprint = manifest_fingerprint(manifest) if manifest else None
    if fingerprint:
        result["pruned"] = _prune(ctx, paths.dest, result["name"], fingerprint, dry_run=ctx.check_mode)
        if result["pruned"]:
            result["changed"] = True  # the snapshot was reused, but older ones were removed
    result["duration"] = ctx.elapsed()
    return result


def _split_table(qualified: str) -> dict:
    schema, _dot, name = qualified.partition(".")
    return {"schema": schema, "name": name}


def _existing_tools_restore(bin_dir: str | None, which: Callable[[str], str | None]) -> str | None:
    if bin_dir:
        path = os.path.join(bin_dir, "pg_restore")
        return path if os.access(path, os.X_OK) else None
    return which("pg_restore")


def _take(ctx: Context, tools, paths: SnapshotPaths, psql: str, server: dict, fingerprint: dict, result: dict):
    """Dump into the partial name, verify, test-restore, then publish: archive, checksum, manifest last."""
    params = ctx.params
    fmt = paths.fmt
    jobs = params.get("jobs") or 1
    want_counts = bool(params.get("test_restore"))
    _open_partial(paths.partial, fmt)
    published = False
    session = None
    timings = result["timings"] = {}
    clock = time.monotonic()

    def lap(what: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[what] = round(now - clock, 3)
        clock = now

    try:
        session, snapshot_id = _open_dump_session(psql, ctx.env, ctx.target, server, ctx.session_factory,
                                                  ctx.warnings)
        if session is not None:
            facts = gather_facts(session.query_json, want_counts)
        else:
            facts = gather_facts(lambda sql: psql_json(psql, sql, ctx.env, ctx.target, ctx.runner), want_counts)
        argv = dump_argv(tools.pg_dump, paths.partial, fmt, jobs, params.get("compress"), snapshot_id)
        result["command"] = argv
        lap("facts")
        try:
            rc, _out, err = ctx.runner(argv, ctx.env)
        finally:
            if session is not None:
                session.close()
                session = None
        lap("dump")
        dump_seconds = timings["dump"]
        if rc != 0:
            raise dump_failure_message(rc, err, ctx.target, tools.version_text, paths.dest)
        errors = stderr_errors(err)
        if errors:
            raise PgError(f"pg_dump reported errors; no snapshot was written: {' | '.join(errors[:5])}",
                          kind="dump_failed")
        label = os.path.basename(paths.archive)
        digest, size, sha_text = archive_digest(paths.partial, fmt, label)
        lap("checksum")
        if size == 0:
            raise PgError("pg_dump exited successfully but wrote nothing; no snapshot was written.",
                          kind="dump_failed")
        listing = verify_archive(tools.pg_restore, paths.partial, ctx.env, ctx.runner,
                                 params.get("verify_data", True))
        expected = table_names(facts["tables"])
        missing = sorted(set(expected) - set(listing["tables"]))
        if missing:
            raise PgError(
                f"the dump does not list {len(missing)} of the {len(expected)} tables that were in the database "
                f"at dump time ({', '.join(missing[:10])}); no snapshot was written.",
                kind="verify_failed",
            )
        lap("pg_restore_checks")
        timings["verify"] = round(timings["checksum"] + timings["pg_restore_checks"], 3)
        test = None
        if params.get("test_restore"):
            test = _test_restore(ctx, tools, psql, server, paths.partial, fmt, facts["tables"], facts["row_counts"],
                                 shown_as=paths.archive)
            lap("test_restore")
        _make_private(paths.partial)
        manifest = build_manifest(paths, fingerprint, server, tools, listing, facts, digest, size, ctx.now_dt,
                                  params, snapshot_id, dump_seconds, test)
        _write_private(paths.sha256, sha_text)
        os.replace(paths.partial, paths.archive)
        _fsync_dir(paths.dest)
        _write_private(paths.manifest, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _fsync_dir(paths.dest)
        published = True
        lap("publish")
    except OSError as exc:
        raise PgError(
            f"writing the snapshot in {paths.dest} failed: {exc.strerror or exc}; nothing was kept.",
            kind="dest_full" if getattr(exc, "errno", None) == 28 else "dest",
        ) from exc
    finally:
        if session is not None:
            session.close()
        _remove(paths.partial)
        if not published:
            # a snapshot is complete only with its manifest: never leave a part of one
            _remove(paths.archive)
            _remove(paths.sha256)
            _remove(paths.manifest)
    return manifest, listing, digest, size, test


def build_manifest(paths: SnapshotPaths, fingerprint: Mapping, server: Mapping, tools, listing: Mapping,
                   facts: Mapping, digest: str | None, size: int | None, now_dt: datetime.datetime,
                   params: Mapping, snapshot_id: str | None = None, dump_seconds: float | None = None,
                   test: Mapping | None = None) -> dict:
    manifest = {
        "collection": COLLECTION,
        "kind": KIND,
        "manifest_version": MANIFEST_VERSION,
        "name": paths.name,
        "file": os.path.basename(paths.archive),
        "format": paths.fmt,
        "provider": "pg_dump",
        "created": now_dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fingerprint": dict(fingerprint),
        # the fingerprint's fields again at the top level, as in manifest version 1
        "database": fingerprint["database"],
        "host": fingerprint["host"],
        "port": fingerprint["port"],
        "user": fingerprint["user"],
        "server_version": server.get("server_version"),
        "server_version_num": server.get("server_version_num"),
        "system_identifier": server.get("system_identifier"),
        "in_recovery": server.get("in_recovery"),
        "pg_dump_version": (listing.get("pg_dump_version") or tools.version_text) if tools else None,
        "size": size,
        "sha256": digest,
        "sha256_method": ("sha256 of the sorted sha256sum listing of every file (the .sha256 file)"
                          if paths.fmt == "directory" else "sha256 of the archive file"),
        "tables": len(listing.get("tables") or []),
        "table_names": list(listing.get("tables") or []),
        "applied_migrations": list(facts.get("applied_migrations") or []),
        "consistent_snapshot": bool(snapshot_id),
    }
    if paths.fmt == "directory":
        manifest["jobs"] = params.get("jobs") or 1
    if params.get("compress") is not None:
        manifest["compress"] = params.get("compress")
    if dump_seconds is not None:
        manifest["dump_seconds"] = dump_seconds
    if facts.get("row_counts") is not None:
        manifest["row_counts"] = facts["row_counts"]
    if test is not None:
        manifest["test_restore"] = dict(test)
    return manifest


# -- test restore into a scratch database -----------------------------------------------------

def _test_restore(ctx: Context, tools, psql: str, server: Mapping, archive: str, fmt: str, tables: list,
                  expected_counts: Mapping | None, shown_as: str | None = None) -> dict:
    """Restore ``archive`` into a new scratch database, count every table's rows there and compare
    them with the exact counts read in the dump's snapshot; the scratch database is always dropped."""
    started = time.monotonic()
    scratch = scratch_name(ctx.conn.database)
    options = ["TEMPLATE template0"]
    for option, key in (("ENCODING", "encoding"), ("LC_COLLATE", "datcollate"), ("LC_CTYPE", "datctype")):
        if server.get(key):
            options.append(f"{option} {quote_literal(server[key])}")
    create_sql = f"CREATE DATABASE {quote_ident(scratch)} " + " ".join(options)
    drop_sql = f"DROP DATABASE IF EXISTS {quote_ident(scratch)}"
    if (server.get("server_version_num") or 0) >= 130000:
        drop_sql += " WITH (FORCE)"
    scratch_env = dict(ctx.env, PGDATABASE=scratch)
    report = {"database": scratch, "tables_checked": 0, "mismatches": [],
              "compared_with": "exact row counts in the dump's snapshot" if expected_counts is not None
              else "nothing (no row counts recorded when the snapshot was taken): tables only",
              "dropped": False}
    created = False
    try:
        try:
            _psql_exec(psql, create_sql, ctx.env, ctx.target, ctx.runner, kind="test_restore_failed")
        except PgError as exc:
            raise PgError(f"test_restore: cannot create the scratch database {scratch}: {exc.message}",
                          kind="test_restore_failed") from exc
        created = True
        argv = scratch_restore_argv(tools.pg_restore, archive, scratch, ctx.params.get("jobs") or 1)
        rc, _out, err = ctx.runner(argv, scratch_env)
        if rc != 0:
            raise PgError(
                f"test_restore: restoring {shown_as or archive} into the scratch database {scratch} failed, so the "
                f"snapshot is not trusted and was not kept: {tail(err) or 'rc=' + str(rc)}",
                kind="test_restore_failed",
            )
        restored = {}
        if tables:
            values = psql_json(psql, count_sql(tables), scratch_env, dict(ctx.target, database=scratch), ctx.runner)
            restored = counts_by_table(tables, values)
        report["tables_checked"] = len(restored)
        report["row_counts"] = restored
        if expected_counts is not None:
            for table, count in restored.items():
                want = expected_counts.get(table)
                if want is not None and int(want) != int(count):
                    report["mismatches"].append({"table": table, "expected": int(want), "restored": int(count)})
    except PgError as exc:
        if exc.kind != "test_restore_failed":
            exc.kind = "test_restore_failed"
            exc.message = f"test_restore in scratch database {scratch}: {exc.message}"
        raise
    finally:
        if created:
            rc, _out, err = ctx.runner(psql_argv(psql, drop_sql), ctx.env)
            report["dropped"] = rc == 0
            if rc != 0:
                ctx.warnings.append(f"could not drop the scratch database {scratch}: {tail(err, 3)}; drop it by hand.")
        report["seconds"] = round(time.monotonic() - started, 3)
    if report["mismatches"]:
        first = report["mismatches"][0]
        raise PgError(
            f"test_restore: {len(report['mismatches'])} table(s) restored with other row counts than the database "
            f"had at dump time (e.g. {first['table']}: {first['expected']} rows dumped, {first['restored']} "
            "restored); the snapshot is not trusted and was not kept.",
            kind="test_restore_failed",
            test_restore=report,
        )
    return report


# -- retention ------------------------------------------------------------------------------------

def _prune(ctx: Context, dest: str, current: str, fingerprint: Mapping, dry_run: bool) -> list[str]:
    """Keep the snapshot ``current`` and the newest keep-1 other pg_dump snapshots of the same target."""
    keep = ctx.params.get("keep")
    if keep is None:
        return []
    same = [
        (name, manifest) for name, manifest in list_snapshots(dest)
        if name != current and not is_provider_snapshot(manifest)
        and same_target(manifest_fingerprint(manifest), fingerprint)[0]
    ]
    same.sort(key=lambda item: _sort_key(dest, item[0], item[1]), reverse=True)
    pruned = []
    for name, manifest in same[keep - 1:]:
        paths = SnapshotPaths(dest, name, manifest_format(manifest))
        if not dry_run:
            try:
                # archive first, manifest last: an interrupted prune leaves a manifest that the next prune finds
                for path in (paths.archive, paths.sha256, paths.manifest):
                    _remove(path)
                    if os.path.exists(path):
                        raise OSError(f"could not remove {path}")
            except OSError as exc:
                ctx.warnings.append(f"keep: could not remove snapshot {name}: {exc}")
                continue
        pruned.append(name)
    return pruned


# -- provider: command -----------------------------------------------------------------------------

def _provider_env() -> dict:
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)  # the provider talks to a cloud API, not to PostgreSQL
    return env


def _run_provider(ctx: Context, argv: list[str], what: str, timeout: float) -> dict:
    try:
        rc, out, err = run_client(argv, _provider_env(), timeout=timeout) if ctx.runner is run_client \
            else ctx.runner(argv, _provider_env())
    except PgError as exc:
        raise PgError(f"{what} ({argv[0]}): {exc.message}", kind="provider_failed") from exc
    if rc != 0:
        raise PgError(f"{what} failed (rc={rc}): {tail(err, 5) or tail(out, 5) or '(no output)'}",
                      kind="provider_failed")
    return parse_provider_output(out, what)


def _placeholders(ctx: Context, name: str, provider_id: str | None = None) -> dict:
    values = {"name": name, "database": ctx.conn.database, "host": ctx.target["host"],
              "port": ctx.target["port"], "user": ctx.target["user"]}
    if provider_id is not None:
        values["id"] = provider_id
    return values


def _provider_check(ctx: Context, manifest: Mapping, name: str) -> dict:
    """Run provider_check_command until it reports status available (or provider_timeout passes)."""
    template = ctx.params.get("provider_check_command")
    if not template:
        raise PgError(
            f"snapshot {name} was taken by a provider command; set provider: command and provider_check_command "
            "so that it can be checked before it is reused.",
            kind="provider_failed",
        )
    provider_id = str(manifest.get("provider_id"))
    timeout = ctx.params.get("provider_timeout") or 3600
    interval = max(1, ctx.params.get("provider_poll_interval") or 10)
    started = time.monotonic()
    waited = 0
    argv = render_command(template, _placeholders(ctx, name, provider_id))
    while True:
        data = _run_provider(ctx, argv, "provider_check_command", timeout)
        status = data.get("status")
        if status == "available":
            return data
        final = status in PROVIDER_FAILED_STATUSES
        elapsed = max(waited, time.monotonic() - started)
        if final or ctx.check_mode or elapsed + interval > timeout:
            why = "" if final or ctx.check_mode else f" after {int(elapsed)}s (provider_timeout {timeout}s)"
            raise PgError(
                f"provider snapshot {provider_id} is not available: provider_check_command reports status "
                f"{status!r}{why}.",
                kind="provider_not_available",
            )
        ctx.sleep(interval)
        waited += interval


def _provider_snapshot(ctx: Context, result: dict, paths: SnapshotPaths, psql: str, server: dict,
                       fingerprint: dict) -> dict:
    argv = render_command(ctx.params["provider_command"], _placeholders(ctx, paths.name))
    result["command"] = argv
    if ctx.check_mode:
        result.update(changed=True, duration=ctx.elapsed())
        return result
    facts = gather_facts(lambda sql: psql_json(psql, sql, ctx.env, ctx.target, ctx.runner), want_counts=False)
    ensure_dest(paths.dest)
    timeout = ctx.params.get("provider_timeout") or 3600
    created = _run_provider(ctx, argv, "provider_command", timeout)
    provider_id = created.get("id")
    if provider_id in (None, ""):
        raise PgError("the JSON object on the last line of provider_command's output has no 'id'.",
                      kind="provider_failed")
    manifest = build_manifest(paths, fingerprint, server, None, {"tables": table_names(facts["tables"])}, facts,
                              None, None, ctx.now_dt, {})
    manifest.update(provider="command", provider_id=str(provider_id), provider_result=created, file=None,
                    format="provider", sha256_method=None)
    manifest.pop("pg_dump_version", None)
    check = _provider_check(ctx, manifest, paths.name)
    manifest["provider_check"] = check
    try:
        _write_private(paths.manifest, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise PgError(f"provider snapshot {provider_id} was made, but its manifest could not be written in "
                      f"{paths.dest}: {exc.strerror or exc}.", kind="dest") from exc
    result.update(changed=True, manifest=manifest, provider_id=str(provider_id), tables=manifest["table_names"],
                  applied_migrations=manifest["applied_migrations"])
    result["pruned"] = _prune(ctx, paths.dest, paths.name, fingerprint, dry_run=False)
    result["duration"] = ctx.elapsed()
    return result


# -- state: restored ---------------------------------------------------------------------------------

def _restore(ctx: Context) -> dict:
    params = ctx.params
    database = ctx.conn.database
    name = params.get("name")
    if not name:
        raise PgError("state: restored needs name: the snapshot to restore (a <name>.json in dest).",
                      kind="bad_option")
    validate_name(name)
    dest = os.path.abspath(params["dest"])
    if params.get("confirm") != database:
        raise PgError(
            f"restoring snapshot {name} replaces the contents of database {database!r}: set confirm: {database} "
            "to confirm that this is the database to overwrite.",
            kind="not_confirmed",
        )
    found = find_by_name(dest, name)
    if found is None or found[1] is None:
        raise PgError(f"no snapshot {name} in {dest} (no manifest {name}.json of this collection).",
                      kind="not_found")
    paths, manifest = found
    if is_provider_snapshot(manifest):
        raise PgError(
            f"snapshot {name} was taken by a provider command (id {manifest.get('provider_id')}); restore it "
            "with the provider's own tools.",
            kind="bad_option",
        )
    result = {"changed": False, "restored": False, "name": name, "path": paths.archive,
              "manifest_path": paths.manifest, "format": paths.fmt, "target": ctx.target, "manifest": manifest}
    psql = find_psql(params.get("bin_dir"), which=ctx.which)
    server = probe_server(psql, ctx.env, ctx.target, ctx.runner)
    if server.get("in_recovery"):
        raise PgError(f"database {database!r} at {ctx.target['host']}:{ctx.target['port']} is a read-only replica: "
                      "restore into the primary.", kind="read_only")
    current = fingerprint_of(ctx.target, server)
    same, why = same_target(manifest_fingerprint(manifest), current)
    if not same:
        if not params.get("allow_other_target"):
            raise PgError(
                f"snapshot {name} was taken from another database than the target ({why}): refusing to restore it "
                "here. Set allow_other_target: true to restore a copy into another database on purpose.",
                kind="other_target",
            )
        ctx.warnings.append(f"restoring snapshot {name} into another database than it was taken from ({why}).")
    digest, _size = verify_checksum(paths, manifest)
    tools = ctx.select_tools(server_major=server["server_version_num"] // 10000,
                             server_version=server["server_version"], bin_dir=params.get("bin_dir"))
    verify_archive(tools.pg_restore, paths.archive, ctx.env, ctx.runner, params.get("verify_data", True))
    before = table_names(psql_json(psql, TABLES_SQL, ctx.env, ctx.target, ctx.runner) or [])
    extra = sorted(set(before) - set(manifest.get("table_names") or []))
    argv = restore_argv(tools.pg_restore, paths.archive, database)
    result.update(sha256=digest, command=argv, bin_dir=tools.bin_dir, extra_tables=extra,
                  server_version=server["server_version"])
    if extra:
        ctx.warnings.append(
            f"tables not in snapshot {name} are left as they are in {database!r} by the restore: {', '.join(extra)}"
        )
    expected = list(manifest.get("applied_migrations") or [])
    if ctx.check_mode:
        result.update(changed=True, applied_migrations=expected, seconds=ctx.elapsed())
        return result
    started = time.monotonic()
    rc, _out, err = ctx.runner(argv, ctx.env)
    seconds = round(time.monotonic() - started, 3)
    if rc != 0:
        raise PgError(
            f"pg_restore of snapshot {name} into {database!r} failed; its single transaction was rolled back, so "
            f"the database is as it was before: {tail(err, 8) or 'rc=' + str(rc)}",
            kind="restore_failed",
            restored=False,
        )
    applied = psql_json(psql, MIGRATIONS_SQL, ctx.env, ctx.target, ctx.runner) \
        if psql_json(psql, HAS_MIGRATIONS_SQL, ctx.env, ctx.target, ctx.runner) else []
    if list(applied) != expected:
        raise PgError(
            f"snapshot {name} was restored into {database!r}, but its applied migrations differ from the manifest "
            f"({len(applied)} applied, {len(expected)} recorded; first difference: "
            f"{_first_difference(applied, expected)}).",
            kind="restore_verify_failed",
            restored=True,
            applied_migrations=applied,
        )
    result.update(changed=True, restored=True, applied_migrations=applied, seconds=seconds,
                  duration=ctx.elapsed())
    return result


def _first_difference(applied: list, expected: list) -> str:
    for i in range(max(len(applied), len(expected))):
        a = applied[i] if i < len(applied) else None
        b = expected[i] if i < len(expected) else None
        if a != b:
            return f"#{i + 1}: database has {a!r}, manifest {b!r}"
    return "none"
