# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verified pg_dump snapshots: the logic behind safedeploy.django.pg_snapshot.

Private module. A snapshot named N in directory D is three files, all 0600:

- ``D/N.dump``        pg_dump custom format archive (``-Fc``)
- ``D/N.dump.sha256`` its checksum, in ``sha256sum`` format
- ``D/N.json``        a manifest: where it came from, size, checksum, tables, ...

The archive is written to the hidden ``D/.N.dump.partial`` first and renamed to
``N.dump`` only after it has been verified, so a file called ``*.dump`` is always
complete; a crash leaves at most a hidden partial file, which the next run removes.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ansible_collections.safedeploy.django.plugins.module_utils._pg import (
    Connection,
    PgError,
    Runner,
    classify_connection_error,
    find_psql,
    probe_server,
    run_client,
    select_client_tools,
    tail,
)
from ansible_collections.safedeploy.django.plugins.module_utils._secrets import scrub

MANIFEST_FORMAT = 1
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
# pg_restore --list entries: "<dumpId>; <tableoid> <oid> <desc> <schema> <tag> <owner>"
_TABLE_ENTRY_RE = re.compile(r"^\d+;\s+\d+\s+\d+\s+TABLE\s+(?!DATA\s)(\S+)\s+(.+?)\s+(\S+)\s*$")
_HEADER_RE = re.compile(r"^;\s+(Dumped from database version|Dumped by pg_dump version|dbname):\s*(.*?)\s*$")


@dataclass(frozen=True)
class SnapshotPaths:
    dest: str
    name: str

    @property
    def dump(self) -> str:
        return os.path.join(self.dest, f"{self.name}.dump")

    @property
    def partial(self) -> str:
        return os.path.join(self.dest, f".{self.name}.dump.partial")

    @property
    def sha256(self) -> str:
        return self.dump + ".sha256"

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

def dump_argv(pg_dump: str, partial_path: str) -> list[str]:
    """pg_dump command line. Connection settings and the password travel in the environment."""
    return [pg_dump, "--format=custom", "--no-password", "--file", partial_path]


def restore_list_argv(pg_restore: str, archive: str) -> list[str]:
    return [pg_restore, "--list", archive]


def restore_read_argv(pg_restore: str, archive: str) -> list[str]:
    """Read every data block of the archive (restoring into /dev/null): catches truncation."""
    return [pg_restore, "--file", os.devnull, archive]


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


def dump_failure_message(rc: int, stderr: str, target: Mapping, tools_version: str) -> PgError:
    classified = classify_connection_error(stderr, target)
    if classified:
        return classified
    if "server version mismatch" in stderr:
        return PgError(
            f"pg_dump {tools_version} refused the server: {tail(stderr, 3)}. "
            "Set bin_dir to the client binaries of the server's major version or newer.",
            kind="client_too_old",
        )
    how = f"was killed by signal {-rc}" if rc < 0 else f"failed (rc={rc})"
    return PgError(
        f"pg_dump {how}; no snapshot was written. pg_dump said: {tail(stderr) or '(nothing)'}",
        kind="dump_failed",
    )


def stderr_errors(stderr: str) -> list[str]:
    """pg_dump may print warnings and still succeed; lines with 'error' mean the dump is not trustworthy."""
    return [line for line in stderr.splitlines() if re.search(r"\berror\b|\bfatal\b", line, re.IGNORECASE)]


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
        "fix its ownership, or run the task with become."
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


def _open_partial(path: str) -> None:
    """Create the partial file ourselves, 0600, so pg_dump writes into a private file."""
    _remove(path)  # left over by a run that was killed
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise PgError(f"cannot write in dest {os.path.dirname(path)}: {exc.strerror}.", kind="dest") from exc
    os.close(fd)


# -- the operation ----------------------------------------------------------------------------

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


def _read_existing(paths: SnapshotPaths, tools_restore: str | None, env, runner, read_data: bool) -> dict:
    """Re-verify a snapshot that already exists; any mismatch is a failure, never silent reuse."""
    if not os.path.exists(paths.sha256):
        raise PgError(
            f"{paths.dump} exists but {paths.sha256} is missing, so it cannot be verified: "
            "remove the file or choose another name.",
            kind="corrupt",
        )
    with open(paths.sha256, encoding="utf-8") as handle:
        recorded = parse_sha256_line(handle.read())
    if recorded is None:
        raise PgError(f"{paths.sha256} is not in sha256sum format: remove the snapshot or choose another name.",
                      kind="corrupt")
    actual = sha256_of(paths.dump)
    if actual != recorded[0]:
        raise PgError(
            f"snapshot {paths.dump} is corrupted: its sha256 is {actual} but {paths.sha256} records "
            f"{recorded[0]}. It will not be reused: move it away or choose another name.",
            kind="corrupt",
        )
    manifest = {}
    if os.path.exists(paths.manifest):
        try:
            with open(paths.manifest, encoding="utf-8") as handle:
                manifest = json.load(handle)
        except ValueError as exc:
            raise PgError(f"manifest {paths.manifest} is not valid JSON: {exc}", kind="corrupt") from exc
    listing = {"tables": manifest.get("table_names", [])}
    if tools_restore:
        listing = verify_archive(tools_restore, paths.dump, env, runner, read_data)
    return {"sha256": actual, "size": os.path.getsize(paths.dump), "manifest": manifest, "tables": listing["tables"]}


def _existing_tools_restore(bin_dir: str | None, which: Callable[[str], str | None]) -> str | None:
    if bin_dir:
        path = os.path.join(bin_dir, "pg_restore")
        return path if os.access(path, os.X_OK) else None
    return which("pg_restore")


def snapshot(params: Mapping, check_mode: bool, runner: Runner = run_client,
             now: Callable[[], datetime.datetime] | None = None,
             which: Callable[[str], str | None] | None = None,
             select_tools=select_client_tools) -> dict:
    """Take (or re-verify) the snapshot described by the module params; returns the module result."""
    import shutil

    which = which or shutil.which
    started = time.monotonic()
    now_dt = (now or _utcnow)()
    conn = Connection.from_params(params)
    env = conn.child_env()
    target = conn.describe()
    secrets = conn.secrets()
    name = params.get("name") or default_name(conn.database, now_dt)
    validate_name(name)
    dest = os.path.abspath(params["dest"])
    paths = SnapshotPaths(dest, name)
    read_data = params.get("verify_data", True)
    result = {
        "changed": False,
        "reused": False,
        "path": paths.dump,
        "sha256_path": paths.sha256,
        "manifest_path": paths.manifest,
        "name": name,
        "target": target,
    }

    try:
        if os.path.exists(paths.dump):
            restore = _existing_tools_restore(params.get("bin_dir"), which)
            existing = _read_existing(paths, restore, env, runner, read_data)
            result.update(existing, reused=True, duration=round(time.monotonic() - started, 3))
            return result

        check_dest_usable(dest)
        psql = find_psql(params.get("bin_dir"), which=which)
        server = probe_server(psql, env, target, runner)
        tools = select_tools(
            server_major=server["server_version_num"] // 10000,
            server_version=server["server_version"],
            bin_dir=params.get("bin_dir"),
        )
        result.update(
            bin_dir=tools.bin_dir,
            server_version=server["server_version"],
            command=dump_argv(tools.pg_dump, paths.partial),
        )
        if check_mode:
            result.update(changed=True, duration=round(time.monotonic() - started, 3))
            return result

        created_dest = ensure_dest(dest)
        result["dest_created"] = created_dest
        _open_partial(paths.partial)
        renamed = False
        try:
            listing, digest, size = _dump_and_verify(tools, paths, env, runner, target, server, read_data)
            manifest = build_manifest(name, paths, target, server, tools, listing, digest, size, now_dt)
            _write_private(paths.sha256, format_sha256_line(digest, os.path.basename(paths.dump)))
            _write_private(paths.manifest, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            os.chmod(paths.partial, 0o600)
            os.replace(paths.partial, paths.dump)
            renamed = True
            _fsync_dir(dest)
        except OSError as exc:
            raise PgError(
                f"writing the snapshot in {dest} failed: {exc.strerror or exc}; nothing was kept.", kind="dest"
            ) from exc
        finally:
            _remove(paths.partial)
            if not renamed:
                # companions of a dump that never became <name>.dump must not outlive it
                _remove(paths.sha256)
                _remove(paths.manifest)
        result.update(
            changed=True,
            sha256=digest,
            size=size,
            tables=listing["tables"],
            manifest=manifest,
            duration=round(time.monotonic() - started, 3),
        )
        if not listing["tables"]:
            result["warning"] = f"database {conn.database!r} has no tables: the snapshot holds an empty schema."
        return result
    except PgError as exc:
        exc.message = scrub(exc.message, secrets)
        raise


def _dump_and_verify(tools, paths: SnapshotPaths, env, runner, target, server, read_data):
    rc, _out, err = runner(dump_argv(tools.pg_dump, paths.partial), env)
    if rc != 0:
        raise dump_failure_message(rc, err, target, tools.version_text)
    errors = stderr_errors(err)
    if errors:
        raise PgError(f"pg_dump reported errors; no snapshot was written: {' | '.join(errors[:5])}",
                      kind="dump_failed")
    size = os.path.getsize(paths.partial)
    if size == 0:
        raise PgError("pg_dump exited successfully but wrote an empty file; no snapshot was written.",
                      kind="dump_failed")
    listing = verify_archive(tools.pg_restore, paths.partial, env, runner, read_data)
    if not listing["tables"] and server.get("table_count"):
        raise PgError(
            f"the dump lists no TABLE entries but the database has {server['table_count']} tables "
            f"visible to user {server.get('current_user')!r}; no snapshot was written.",
            kind="verify_failed",
        )
    return listing, sha256_of(paths.partial), size


def build_manifest(name, paths, target, server, tools, listing, digest, size, now_dt) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "file": os.path.basename(paths.dump),
        "created": now_dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "database": target["database"],
        "host": target["host"],
        "port": target["port"],
        "user": target["user"],
        "server_version": server["server_version"],
        "server_version_num": server["server_version_num"],
        "system_identifier": server.get("system_identifier"),
        "in_recovery": server.get("in_recovery"),
        "pg_dump_version": listing.get("pg_dump_version") or tools.version_text,
        "format_options": "custom (pg_dump -Fc)",
        "size": size,
        "sha256": digest,
        "tables": len(listing["tables"]),
        "table_names": listing["tables"],
        "applied_migrations": server.get("applied_migrations"),
    }
