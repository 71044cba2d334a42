"""django_migration_plan on harder migration graphs: squashed migrations, target plans (backwards), conflicts.

Runs the real module through ``ansible localhost -m`` against a real PostgreSQL
with the graphproj test project (tests/integration/projects/graphproj):

- ``library``: 0001_initial, 0002_book_subtitle (both replaced by
  0001_squashed_0002_book_subtitle), 0003 RunPython with reverse_code,
  0004 RunPython without reverse_code, 0005 AddField;
- ``clash`` (installed only with GRAPHPROJ_CLASH=1): two leaf nodes 0002_a and 0002_b.

Only the helper's facts are asserted (ids, order, direction, reversibility, SQL,
files), never verdicts: the rules have their own tests.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_django_live import PROJECTS, PYTHON, REPO, ansible, applied_ids, base_env, common, sql

pytestmark = pytest.mark.slow

GRAPH = PROJECTS / "graphproj"
HELPER = REPO / "plugins" / "module_utils" / "_django_helper.py"
REVIEW = {"fail_on_block": False, "fail_on_missing": False}


def manage(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "manage.py", *args], cwd=GRAPH, env=env, capture_output=True, check=False,
                          text=True, timeout=120)


def plan_ids(env: dict, *target: str) -> list[str]:
    """The ids `manage.py migrate [app_label [name]] --plan` prints, in its order."""
    proc = manage(env, "migrate", *target, "--plan", "--no-color")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Planned operations")
    return [line.strip() for line in lines[1:] if line and not line.startswith(" ")]


def run_plan(env: dict, *, check: bool = False, **args) -> dict:
    return ansible("django_migration_plan", common(GRAPH, **REVIEW, **args), env, check=check)


def helper_reply(env: dict, request: dict) -> dict:
    """The helper's raw reply (what the module receives), for the reply-level keys."""
    proc = subprocess.run([PYTHON, str(HELPER)], cwd=GRAPH, input=json.dumps(dict({"action": "plan"}, **request)),
                          env=dict(env, DJANGO_SETTINGS_MODULE="graphproj.settings"), capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def schema(db_env: dict) -> list[tuple]:
    return sql(db_env, "SELECT table_name, column_name, data_type FROM information_schema.columns "
                       "WHERE table_schema = 'public' ORDER BY 1, 2")


def migrate_all(env: dict) -> None:
    proc = manage(env, "migrate", "-v", "0")
    assert proc.returncode == 0, proc.stderr


def op_sql(migration: dict) -> list[str]:
    return [s for op in migration["operations"] for s in op["sql"]]


# -- forwards, squashed migrations ---------------------------------------------------


def test_fresh_database_plans_the_squash_like_migrate(pg_database):
    env = base_env(pg_database)
    expected = plan_ids(env)
    assert expected == ["library.0001_squashed_0002_book_subtitle", "library.0003_fill_subtitles",
                        "library.0004_upper_titles", "library.0005_book_pages"]

    result = run_plan(env)
    assert result["_status"] == "SUCCESS", result.get("msg")
    assert [m["id"] for m in result["plan"]] == expected == result["pending"]
    assert result["direction"] == "forwards" and result["migration_target"] is None
    for migration in result["plan"]:
        assert migration["direction"] == "forwards"
        path = Path(migration["file"])
        assert path.is_absolute() and path.is_file()
        assert path.name == migration["name"] + ".py"
        assert path.parent == GRAPH / "library" / "migrations"
    squash = result["plan"][0]
    assert squash["replaces"] == ["library.0001_initial", "library.0002_book_subtitle"]
    assert any('CREATE TABLE "library_book"' in s and '"subtitle"' in s for s in op_sql(squash))

    raw = helper_reply(pg_database, {"check_missing": False})
    assert raw["ok"] is True and raw["direction"] == "forwards" and raw["migration_target"] is None
    assert [m["id"] for m in raw["plan"]] == expected
    assert applied_ids(pg_database) == []


def test_partially_applied_squash_plans_the_remaining_replaced_migrations(pg_database):
    env = base_env(pg_database)
    # The database of a release from before the squash: only 0001_initial is applied,
    # through the graph without replacements (migrate cannot target a replaced node).
    script = (
        "from django.db import connection\n"
        "from django.db.migrations.executor import MigrationExecutor\n"
        "executor = MigrationExecutor(connection)\n"
        "executor.loader.replace_migrations = False\n"
        "executor.loader.build_graph()\n"
        "executor.migrate([('library', '0001_initial')])\n"
    )
    proc = manage(env, "shell", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert applied_ids(pg_database) == ["library.0001_initial"]

    expected = plan_ids(env)
    assert expected == ["library.0002_book_subtitle", "library.0003_fill_subtitles", "library.0004_upper_titles",
                        "library.0005_book_pages"]
    result = run_plan(env)
    assert result["_status"] == "SUCCESS", result.get("msg")
    assert [m["id"] for m in result["plan"]] == expected
    first = result["plan"][0]
    assert first["direction"] == "forwards" and Path(first["file"]).name == "0002_book_subtitle.py"
    assert any('ADD COLUMN "subtitle"' in s for s in op_sql(first))
    assert applied_ids(pg_database) == ["library.0001_initial"]

    # A forwards target plan through a replaced migration, like `migrate library 0003`.
    target = run_plan(env, target_migration={"app_label": "library", "name": "0003"})
    assert target["_status"] == "SUCCESS", target.get("msg")
    assert [m["id"] for m in target["plan"]] == plan_ids(env, "library", "0003") == expected[:2]
    assert all(m["direction"] == "forwards" for m in target["plan"])


def test_forwards_target_on_a_fresh_database(pg_database):
    env = base_env(pg_database)
    result = run_plan(env, target_migration={"app_label": "library", "name": "0004_upper_titles"})
    assert result["_status"] == "SUCCESS", result.get("msg")
    assert [m["id"] for m in result["plan"]] == plan_ids(env, "library", "0004_upper_titles")
    assert [m["id"] for m in result["plan"]][-1] == "library.0004_upper_titles"
    assert all(m["direction"] == "forwards" for m in result["plan"])

    raw = helper_reply(pg_database, {"check_missing": False, "target": {"app_label": "library", "name": "0004"}})
    assert raw["direction"] == "forwards"
    assert raw["migration_target"] == {"app_label": "library", "name": "0004_upper_titles"}


# -- backwards target plans -----------------------------------------------------------


def test_backwards_target_plan(pg_database):
    env = base_env(pg_database)
    migrate_all(env)
    applied = applied_ids(pg_database)
    columns = schema(pg_database)
    assert "library.0005_book_pages" in applied

    expected = plan_ids(env, "library", "0002")
    assert expected == ["library.0005_book_pages", "library.0004_upper_titles", "library.0003_fill_subtitles"]
    result = run_plan(env, target_migration={"app_label": "library", "name": "0002"})
    assert result["_status"] == "SUCCESS", result.get("msg")
    assert [m["id"] for m in result["plan"]] == expected
    assert result["direction"] == "backwards"
    assert result["migration_target"] == {"app_label": "library", "name": "0002_book_subtitle"}
    assert result["target"]["database"] == pg_database["PGDATABASE"]  # "target" stays the database
    plan = {m["id"]: m for m in result["plan"]}
    for migration in result["plan"]:
        assert migration["direction"] == "backwards"
        assert Path(migration["file"]).is_file() and Path(migration["file"]).name == migration["name"] + ".py"
        for op in migration["operations"]:
            assert op["new_tables"] == [] and op["created_in_plan"] is False

    pages = plan["library.0005_book_pages"]
    assert pages["reversible"] is True
    assert [op["type"] for op in pages["operations"]] == ["AddField"]
    assert pages["operations"][0]["sql_error"] is None
    assert any('DROP COLUMN "pages"' in s for s in op_sql(pages))
    assert pages["operations"][0]["tables"] == ["library_book"]
    assert "library_book" in result["tables"]  # sized for the backwards operations too

    upper = plan["library.0004_upper_titles"]
    assert upper["reversible"] is False
    assert upper["operations"][0]["reversible"] is False
    assert "IrreversibleError" in upper["operations"][0]["sql_error"]
    assert upper["operations"][0]["run_python"]["reverse_code_given"] is False

    fill = plan["library.0003_fill_subtitles"]
    assert fill["reversible"] is True and fill["operations"][0]["sql_error"] is None
    assert fill["operations"][0]["run_python"] == {
        "code": "library.migrations.0003_fill_subtitles.clear_subtitles",
        "reverse_code_given": True,
    }

    # The rollback rules: which of these can be unapplied, and what unapplying destroys.
    verdicts = {m["id"]: {v["rule"]: v["risk"] for v in m["verdicts"]} for m in result["plan"]}
    assert verdicts == {
        "library.0005_book_pages": {"unapply-drops-data": "high"},
        "library.0004_upper_titles": {"unapply-irreversible": "high"},
        "library.0003_fill_subtitles": {"unapply-reversible": "low"},
    }
    assert result["highest_risk"] == "high" and result["gate"]["blocked"] is True
    assert "2 migration(s) to unapply" not in result["report_markdown"]
    assert "3 migration(s) to unapply" in result["report_markdown"]

    raw = helper_reply(pg_database, {"check_missing": False, "target": {"app_label": "library", "name": "0002"}})
    assert raw["direction"] == "backwards"
    assert raw["migration_target"] == {"app_label": "library", "name": "0002_book_subtitle"}
    assert raw["target"]["database"] == pg_database["PGDATABASE"]  # "target" stays the database

    # Check mode: the same answer. Neither run changed the database.
    checked = run_plan(env, check=True, target_migration={"app_label": "library", "name": "0002"})
    assert checked["_status"] == "SUCCESS", checked.get("msg")
    assert checked["changed"] is False
    assert [m["id"] for m in checked["plan"]] == expected
    assert [[op["sql"] for op in m["operations"]] for m in checked["plan"]] == [
        [op["sql"] for op in m["operations"]] for m in result["plan"]
    ]
    assert applied_ids(pg_database) == applied
    assert schema(pg_database) == columns


def test_backwards_to_zero(pg_database):
    env = base_env(pg_database)
    migrate_all(env)
    applied = applied_ids(pg_database)
    expected = plan_ids(env, "library", "zero")
    assert expected[-1] == "library.0001_squashed_0002_book_subtitle"
    result = run_plan(env, target_migration={"app_label": "library", "name": "zero"})
    assert result["_status"] == "SUCCESS", result.get("msg")
    assert [m["id"] for m in result["plan"]] == expected
    assert all(m["direction"] == "backwards" for m in result["plan"])
    assert result["migration_target"] == {"app_label": "library", "name": None}
    squash = result["plan"][-1]
    assert op_sql(squash) == ['DROP TABLE "library_book" CASCADE;']
    assert squash["reversible"] is True
    raw = helper_reply(pg_database, {"check_missing": False, "target": {"app_label": "library", "name": "zero"}})
    assert raw["direction"] == "backwards" and raw["migration_target"] == {"app_label": "library", "name": None}
    assert applied_ids(pg_database) == applied


def test_target_already_reached_is_an_empty_plan(pg_database):
    env = base_env(pg_database)
    migrate_all(env)
    result = run_plan(env, target_migration={"app_label": "library", "name": "0005"})
    assert result["_status"] == "SUCCESS", result.get("msg")
    assert result["plan"] == [] and plan_ids(env, "library", "0005") == []
    assert result["direction"] == "none"
    raw = helper_reply(pg_database, {"check_missing": False, "target": {"app_label": "library", "name": "0005"}})
    assert raw["direction"] == "none" and raw["plan"] == []


def test_backwards_sql_matches_sqlmigrate_backwards(pg_database):
    """Per migration, the backwards SQL is what `sqlmigrate --backwards` prints (riskyproj, many operation kinds)."""
    env = base_env(pg_database)
    risky = PROJECTS / "riskyproj"
    proc = subprocess.run([PYTHON, "manage.py", "migrate", "-v", "0"], cwd=risky, env=env, capture_output=True,
                          text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = ansible("django_migration_plan", common(risky, **REVIEW, target_migration={
        "app_label": "catalog", "name": "zero"}), env)
    assert result["_status"] == "SUCCESS", result.get("msg")
    compared = 0
    for migration in result["plan"]:
        assert migration["direction"] == "backwards"
        if not migration["reversible"]:
            assert any((op["sql_error"] or "").startswith("IrreversibleError") for op in migration["operations"])
            continue
        proc = subprocess.run([PYTHON, "manage.py", "sqlmigrate", "--backwards", migration["app_label"],
                               migration["name"]], cwd=risky, env=env, capture_output=True, text=True, check=False,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        expected = [line for line in proc.stdout.splitlines()
                    if line.strip() and not line.startswith("--") and line not in ("BEGIN;", "COMMIT;")]
        assert op_sql(migration) == expected, migration["id"]
        compared += 1
    assert compared >= 8
    # Operations of a migration are unapplied in reverse order, with their original index.
    initial = result["plan"][-1]
    assert initial["id"] == "catalog.0001_initial"
    assert [op["index"] for op in initial["operations"]] == [1, 0]


# -- bad targets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "fragments"),
    [
        ({"app_label": "nope", "name": "0001"}, ["no installed app with label 'nope'", "library"]),
        ({"app_label": "library", "name": "0009"}, ["no migration matching '0009'", "0005_book_pages", "zero"]),
        ({"app_label": "library", "name": "0001"},
         ["more than one migration", "0001_initial", "0001_squashed_0002_book_subtitle", "Give more of the name"]),
        ({"app_label": "library", "name": "0001_initial"},
         ["replaced by library.0001_squashed_0002_book_subtitle", "target the squashed migration"]),
    ],
    ids=["unknown-app", "unknown-migration", "ambiguous-prefix", "replaced-migration"],
)
def test_bad_target_fails_clearly(pg_database, target, fragments):
    env = base_env(pg_database)
    result = run_plan(env, target_migration=target)
    assert result["_status"] == "FAILED!"
    assert result["error_kind"] == "bad_target"
    for fragment in fragments:
        assert fragment in result["msg"], (fragment, result["msg"])
    assert applied_ids(pg_database) == []


# -- conflicts -----------------------------------------------------------------------------


def test_conflicting_leaf_nodes_fail_with_merge_hint(pg_database):
    env = base_env(pg_database)
    result = run_plan(env, app_environment={"GRAPHPROJ_CLASH": "1"})
    assert result["_status"] == "FAILED!"
    assert result["error_kind"] == "migration_conflict"
    for fragment in ("0002_a", "0002_b", "clash", "makemigrations --merge"):
        assert fragment in result["msg"], (fragment, result["msg"])
    # Without the clash app the same project plans fine.
    assert run_plan(env)["_status"] == "SUCCESS"
