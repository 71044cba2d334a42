# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit record of a django_migrate_once run, and the private log it is appended to."""

from __future__ import annotations

import contextlib
import datetime
import getpass
import json
import os
import socket
import stat

from ansible_collections.safedeploy.django.plugins.module_utils._secrets import scrub

# Helper error kinds that refuse before any change.
REFUSALS = ("target_mismatch", "replica", "plan_changed", "bad_phase")


def open_audit_log(path: str) -> tuple[int, list[str]]:
    """Open ``path`` for appending, before anything changes: parents made 0700, the file created 0600.

    An existing file keeps its permissions (never loosened; a warning when others may read it).
    A symlink is refused (O_NOFOLLOW). Returns (fd, warnings); raises OSError.
    """
    warnings = []
    missing = []
    parent = os.path.dirname(path)
    while parent and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):  # os.makedirs gives the mode to the last one only
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
    if os.path.islink(path):
        raise OSError(f"{path} is a symlink; refusing to write the audit record through it")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    if info.st_mode & 0o077:
        warnings.append(
            f"audit_log {path} is readable or writable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            "left as it is: tighten it with chmod 600."
        )
    return fd, warnings


def append_audit(fd: int, record: dict) -> None:
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode("utf-8")
    written = 0
    while written < len(line):
        written += os.write(fd, line[written:])


def _whoami() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry (containers)
        return str(os.getuid())


def outcome_of(check_mode: bool, reply: dict | None, kind: str | None) -> str:
    if check_mode and kind is None:
        return "check_mode"
    if kind is None:
        return "applied" if (reply or {}).get("applied") else "nothing_to_do"
    if kind == "verification_failed":
        return "verification_failed"
    if kind in REFUSALS:
        return "refused"
    return "failed"


def audit_record(params: dict, check_mode: bool, reply: dict | None, kind: str | None, error: str | None,
                 secrets: list[str]) -> dict:
    reply = reply or {}
    lock = reply.get("lock") or {}
    verification = reply.get("verification") or {}
    record = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": socket.getfqdn(),
        "remote_user": _whoami(),
        "context": params.get("audit_context") or {},
        "target": reply.get("target") or {},
        "lock": {"name": lock.get("name", params.get("lock_name")), "waited": lock.get("waited")},
        "phase": reply.get("phase") or params.get("phase"),
        "plan_digest": reply.get("plan_digest"),
        "pending_before": reply.get("pending_before") or [],
        "applied": [{"id": a.get("id"), "seconds": a.get("seconds")} for a in reply.get("applied") or []],
        "attempts": reply.get("attempts") or [],
        "retries_used": reply.get("retries_used") or 0,
        "blockers": reply.get("blockers") or [],
        "verification": {
            "ok": verification.get("ok"),
            "pending_after": verification.get("pending_after"),
            "invalid_indexes": verification.get("invalid_indexes") or [],
            "checks": [{"name": c.get("name"), "status": c.get("status")} for c in verification.get("checks") or []],
        },
        "outcome": outcome_of(check_mode, reply, kind),
        "error": error,
    }
    return scrub(record, secrets)
