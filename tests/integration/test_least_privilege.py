"""The least-privilege setup of docs/migrate-once.md, on a real PostgreSQL.

Migrations run as a migration role (DDL through membership of the schema owner); the
application's role has DML only. The plan and migrate modules get the migration role's
credentials; the app role can then use the new tables but cannot change the schema.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import psycopg
import pytest

from tests.integration.test_django_live import PROJECTS, ansible, applied_ids, base_env, common

pytestmark = pytest.mark.slow

GRAPH = PROJECTS / "graphproj"
DOC = Path(__file__).resolve().parents[2] / "docs" / "migrate-once.md"


def documented_sql() -> str:
    """The role setup exactly as the docs show it (the first ```sql block of the least-privilege section)."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Least privilege"):]
    return re.search(r"```sql\n(.*?)```", section, re.S).group(1)


@pytest.fixture()
def roles(pg_cluster):
    database = "t_least_privilege"
    passwords = {"shop_migrate": "mig-" + os.urandom(6).hex(), "shop_app": "app-" + os.urandom(6).hex()}
    pg_cluster.drop_database(database)
    pg_cluster.psql("DROP ROLE IF EXISTS shop_app; DROP ROLE IF EXISTS shop_migrate; DROP ROLE IF EXISTS shop_owner;")
    pg_cluster.psql(f"CREATE DATABASE {database}")
    setup = documented_sql().replace("ALTER DATABASE shop", f"ALTER DATABASE {database}")
    setup = setup.replace("ON DATABASE shop", f"ON DATABASE {database}")
    for role, password in passwords.items():
        placeholder = f"CREATE ROLE {role} LOGIN PASSWORD '...'"
        setup = setup.replace(placeholder, placeholder.replace("...", password))
    pg_cluster.psql(setup, database)
    yield {role: pg_cluster.env(role, password, database) for role, password in passwords.items()}
    pg_cluster.drop_database(database)
    pg_cluster.psql("DROP OWNED BY shop_app, shop_migrate, shop_owner CASCADE;", "postgres")
    pg_cluster.psql("DROP ROLE IF EXISTS shop_app; DROP ROLE IF EXISTS shop_migrate; DROP ROLE IF EXISTS shop_owner;")


def connect(env: dict):
    return psycopg.connect(host=env["PGHOST"], port=env["PGPORT"], user=env["PGUSER"], password=env["PGPASSWORD"],
                           dbname=env["PGDATABASE"], autocommit=True)


def test_migrations_as_the_migration_role_app_keeps_dml_only(roles):
    app, migrate_role = roles["shop_app"], roles["shop_migrate"]
    # The app's role cannot migrate: it has no right to create tables.
    refused = ansible("django_migrate_once", common(GRAPH, app_environment=app), base_env(),
                      secret=app["PGPASSWORD"])
    assert refused["_status"] == "FAILED!" and "permission denied" in refused["msg"], refused["msg"]

    review = {"fail_on_block": False, "fail_on_missing": False}
    plan = ansible("django_migration_plan", common(GRAPH, app_environment=migrate_role, **review), base_env(),
                   secret=migrate_role["PGPASSWORD"])
    assert plan["_status"] == "SUCCESS" and plan["target"]["user"] == "shop_migrate"
    result = ansible("django_migrate_once", common(GRAPH, app_environment=migrate_role), base_env(),
                     secret=migrate_role["PGPASSWORD"])
    assert result["_status"] == "CHANGED", result.get("msg")
    assert [m["id"] for m in result["applied"]] == plan["pending"]
    assert result["target"]["user"] == "shop_migrate"
    assert set(plan["pending"]) <= set(applied_ids(migrate_role))

    with connect(app) as conn:
        owners = dict(conn.execute(
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'library_%'"
        ).fetchall())
        assert owners and set(owners.values()) == {"shop_owner"}, owners
        conn.execute("INSERT INTO library_book (title) VALUES ('dml works')")
        assert conn.execute("SELECT count(*) FROM library_book WHERE title = 'dml works'").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER TABLE library_book ADD COLUMN nope integer")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE library_book")
