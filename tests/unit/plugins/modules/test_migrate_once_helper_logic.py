"""Pure pieces of the helper's migrate action: digest, phases, retries, blocker text, index names, checks."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils import _django_helper as h


class FakeMigration:
    def __init__(self, app_label, name, phase=None, replaces=()):
        self.app_label, self.name, self.replaces = app_label, name, list(replaces)
        if phase is not None:
            self.safedeploy_phase = phase


def test_plan_digest_lines():
    file_sha = hashlib.sha256(Path(sys.modules[__name__].__file__).read_bytes()).hexdigest()
    items = [FakeMigration("shop", "0001_initial"), (FakeMigration("shop", "0002_x"), False)]
    expected = hashlib.sha256(f"shop.0001_initial\t{file_sha}\nshop.0002_x\t{file_sha}\n".encode()).hexdigest()
    assert h._plan_digest(items) == expected
    assert h._plan_digest([]) == hashlib.sha256(b"").hexdigest()
    assert h._plan_digest(items[::-1]) != expected  # the order counts


def test_plan_digest_without_file(monkeypatch):
    migration = FakeMigration("shop", "0001_initial")
    monkeypatch.setattr(h, "_migration_file", lambda m: None)
    assert h._plan_digest([migration]) == hashlib.sha256(b"shop.0001_initial\tnofile\n").hexdigest()


def test_migration_phase():
    assert h._migration_phase(FakeMigration("a", "1")) == "pre"
    assert h._migration_phase(FakeMigration("a", "1", "post")) == "post"
    assert h._migration_phase(FakeMigration("a", "1", "pre"), ["a.1"]) == "post"  # the list wins
    assert h._migration_phase(FakeMigration("a", "9_squashed", replaces=[("a", "1")]), {"a.1"}) == "post"
    with pytest.raises(h.HelperError) as err:
        h._migration_phase(FakeMigration("a", "1", "contract"))
    assert err.value.kind == "bad_phase" and "a.1" in err.value.message and "'contract'" in err.value.message


def test_backoff_bounds(monkeypatch):
    monkeypatch.setattr("random.uniform", lambda a, b: b)
    assert [h._backoff(2.0, n) for n in (1, 2, 3, 4, 5, 6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    monkeypatch.setattr("random.uniform", lambda a, b: a)
    assert h._backoff(0.5, 1) == 0.25


def test_sqlstate_along_the_chain():
    class Driver(Exception):
        sqlstate = "55P03"

    try:
        try:
            raise Driver("lock timeout")
        except Driver as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert h._sqlstate(wrapped) == "55P03"
    assert h._sqlstate(ValueError("x")) is None


def test_blocker_query_is_masked_before_it_is_cut():
    secret = "s3cr3t-value"
    text = "SELECT  1,\n\t" + "x" * 185 + f" '{secret}' FROM t"
    shown = h._blocker_query(text, [secret])
    assert secret[:3] not in shown[180:] and len(shown) <= 200 and "\n" not in shown
    assert h._blocker_query("ALTER ROLE app PASSWORD 'hunter2'", []) == "ALTER ROLE app PASSWORD ********"
    assert h._blocker_query("alter user a with password = \"p w\"", []) == "alter user a with password = ********"
    assert h._blocker_query(None, []) is None


@pytest.mark.parametrize(
    "got,expect,match",
    [(0, 0, True), (0, "0", True), ("1.50", "1.5", True), (3, 3.0, True), (None, None, True), ("a", "a", True),
     (42, 43, False), (True, 1, False), (None, 0, False), ("x", "1", False), ("NaN", "NaN", True)],
)
def test_check_matches(got, expect, match):
    assert h._check_matches(got, expect) is match


def test_concurrent_index_names():
    from django.contrib.postgres.operations import AddIndexConcurrently
    from django.db import migrations, models

    class Migration(migrations.Migration):
        atomic = False
        operations = [
            AddIndexConcurrently("order", models.Index(fields=["status"], name="shop_order_status_idx")),
            migrations.RunSQL(
                ["CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"Mixed\"\"Case\" ON shop_order (code)",
                 "create index concurrently LOWER_me on shop_order (x)",
                 "CREATE INDEX CONCURRENTLY ON shop_order (y)",  # unnamed: cannot be matched
                 "CREATE INDEX plain_idx ON shop_order (z)"],
            ),
            migrations.SeparateDatabaseAndState(database_operations=[
                migrations.RunSQL("CREATE INDEX CONCURRENTLY inner_idx ON shop_order (w)")]),
        ]

    names = h._concurrent_index_names(Migration("0009_idx", "shop"))
    assert names == {"shop_order_status_idx", 'Mixed"Case', "lower_me", "inner_idx"}
