"""Shared pytest setup: import path for the collection and a real PostgreSQL.

The collection is imported as ``ansible_collections.safedeploy.django`` through
a symlink in ``.build/collections`` (what ansible itself would see once the
collection is installed), so unit tests exercise the real import paths.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / ".build" / "collections"


def _link_collection() -> None:
    link = COLLECTIONS / "ansible_collections" / "safedeploy" / "django"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO)
    for path in (str(COLLECTIONS), str(REPO)):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", str(COLLECTIONS))


_link_collection()


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory):
    """A real PostgreSQL cluster for the whole session, destroyed at the end."""
    from devtools.pgcluster import Cluster

    cluster = Cluster(tmp_path_factory.mktemp("pg")).ensure_started()
    yield cluster
    # keep the server log where it can be read after the run: a backend crash
    # shows up only there ("terminated by signal ...")
    keep = REPO / ".build" / "test-logs"
    keep.mkdir(parents=True, exist_ok=True)
    if cluster.logfile.exists():
        (keep / "postgresql.log").write_text(cluster.logfile.read_text(errors="replace"))
    cluster.destroy()


@pytest.fixture()
def pg_database(pg_cluster, request):
    """A fresh database owned by a password-authenticated role, as libpq env vars.

    Returns a dict with PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE; the database
    is dropped after the test.
    """
    import re

    name = "t_" + re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40]
    password = "pw-" + os.urandom(6).hex()
    pg_cluster.create_role("app_owner", password, createdb=True)
    pg_cluster.drop_database(name)
    pg_cluster.create_database(name, owner="app_owner")
    yield pg_cluster.env("app_owner", password, name)
    pg_cluster.drop_database(name)
