"""django_migrate_once target_migration: unapply down to a migration, under the lock, refusing what cannot be reversed.

Through the real module, real PostgreSQL, and two test projects: phaseproj (phases 0001-0004, all reversible)
and graphproj (library 0004 is a RunPython without reverse_code).
"""

from __future__ import annotations

import json

import pytest

from tests.integration.test_django_live import PROJECTS, ansible, applied_ids, base_env, common, manage

pytestmark = pytest.mark.slow

PHASE = PROJECTS / "phaseproj"
GRAPH = PROJECTS / "graphproj"
P1, P2, P3, P4 = (
    "phases.0001_initial",
    "phases.0002_widget_color",
    "phases.0003_remove_widget_legacy",
    "phases.0004_widget_size",
)
TO_0002 = {"app_label": "phases", "name": "0002"}


def phases_applied(db_env: dict) -> list[str]:
    return [m for m in applied_ids(db_env) if m.startswith("phases.")]


def test_unapplies_down_to_the_target_once_and_records_it(pg_database, tmp_path):
    env = base_env(pg_database)
    manage(PHASE, env, "migrate", "-v", "0")
    before = applied_ids(pg_database)
    assert phases_applied(pg_database) == [P1, P2, P3, P4]
    log = tmp_path / "audit.log"

    checked = ansible("django_migrate_once", common(PHASE, target_migration=TO_0002), env, check=True)
    assert checked["_status"] == "CHANGED", checked.get("msg")
    assert checked["would_unapply"] == [P4, P3] and checked["would_apply"] == []
    assert checked["migration_target"] == {"app_label": "phases", "name": "0002_widget_color"}
    assert checked["last_applied"]["phases"] == "0004_widget_size"
    assert checked["applied_before"] == sorted(before)
    assert applied_ids(pg_database) == before  # check mode changes nothing

    args = common(PHASE, target_migration=TO_0002, audit_log=str(log), audit_context={"release": "rollback-test"})
    result = ansible("django_migrate_once", args, env)
    assert result["_status"] == "CHANGED", result.get("msg")
    assert [m["id"] for m in result["unapplied"]] == [P4, P3] and result["applied"] == []
    assert result["last_applied"]["phases"] == "0004_widget_size"  # what was applied once the lock was held
    assert result["verification"]["ok"] is True and result["verification"]["pending_after"] == []
    assert result["lock"]["acquired"] is True
    assert phases_applied(pg_database) == [P1, P2]
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["outcome"] == "unapplied" and [m["id"] for m in record["unapplied"]] == [P4, P3]
    assert record["target_migration"]["name"] == "0002_widget_color"

    again = ansible("django_migrate_once", common(PHASE, target_migration=TO_0002), env)
    assert again["_status"] == "SUCCESS", again.get("msg")
    assert again["unapplied"] == [] and again["last_applied"]["phases"] == "0002_widget_color"

    # applying forward again works: the schema really went back
    forward = ansible("django_migrate_once", common(PHASE), env)
    assert [m["id"] for m in forward["applied"]] == [P3, P4], forward.get("msg")


def test_a_target_ahead_of_the_applied_state_is_refused(pg_database):
    env = base_env(pg_database)
    manage(PHASE, env, "migrate", "phases", "0001", "-v", "0")
    result = ansible("django_migrate_once", common(PHASE, target_migration={"app_label": "phases", "name": "0003"}),
                     env)
    assert result["_status"] == "FAILED!" and result["error_kind"] == "bad_target", result
    assert "is not applied" in result["msg"] and "only unapplies" in result["msg"]
    assert phases_applied(pg_database) == [P1]


def test_target_needs_phase_all(pg_database):
    env = base_env(pg_database)
    result = ansible("django_migrate_once", common(PHASE, target_migration=TO_0002, phase="pre"), env)
    assert result["_status"] == "FAILED!" and "leave phase at all" in result["msg"]


def test_an_irreversible_migration_is_refused_before_any_change(pg_database):
    env = base_env(pg_database)
    manage(GRAPH, env, "migrate", "-v", "0")
    before = applied_ids(pg_database)
    target = {"app_label": "library", "name": "0003"}
    for check in (True, False):
        result = ansible("django_migrate_once", common(GRAPH, target_migration=target), env, check=check)
        assert result["_status"] == "FAILED!" and result["error_kind"] == "irreversible", result
        assert "library.0004_upper_titles" in result["msg"] and "Nothing was changed" in result["msg"]
        assert result["irreversible"][0].startswith("library.0004_upper_titles: operation 0")
        assert applied_ids(pg_database) == before
