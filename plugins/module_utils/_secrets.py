# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Masking secret values in what modules return (shared by the PostgreSQL and Django modules).

Belt and braces: Ansible masks the no_log values it knows of, but the secrets a
child process sees (PGPASSWORD from the environment, a password read from a
settings module) may reach its error output without Ansible knowing them.
"""

from __future__ import annotations

MASK = "********"


def scrub(value, secrets):
    """Replace every secret inside ``value`` with ``********``; strings, and recursively
    the strings inside dicts, lists and tuples. Longer secrets are replaced first, so a
    secret that contains another is masked whole."""
    ordered = sorted({s for s in secrets if s}, key=len, reverse=True)
    if not ordered:
        return value
    return _scrub(value, ordered)


def _scrub(value, ordered):
    if isinstance(value, str):
        for secret in ordered:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {key: _scrub(item, ordered) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(item, ordered) for item in value]
    return value
