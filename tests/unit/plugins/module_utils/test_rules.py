"""The rule engine, on operation facts shaped like _django_helper's and on SQL text."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils import _rules

TODAY = datetime.date(2030, 6, 15)


def field(**overrides):
    facts = {
        "name": "f", "null": False, "has_default": False, "db_default": False, "db_default_kind": None,
        "db_index": False, "unique": False, "primary_key": False, "is_relation": False, "db_type": "integer",
    }
    facts.update(overrides)
    return facts


def op(kind, sql=(), table="shop_order", created=False, **extra):
    facts = {
        "type": kind, "description": kind, "table": table, "tables": [table] if table else [],
        "new_tables": [table] if created and table else [], "created_in_plan": created,
        "reversible": True, "reduces_to_sql": kind != "RunPython", "sql": list(sql), "sql_error": None,
    }
    facts.update(extra)
    return facts


ADD_COL = 'ALTER TABLE "shop_order" ADD COLUMN "x" integer'
CASES = {
    "new table": (op("CreateModel", ['CREATE TABLE "shop_order" (...)'], created=True), {"create-table": "low"}),
    "index on new table is fine": (
        op("CreateModel", ['CREATE TABLE "shop_order" (...)', 'CREATE INDEX "i" ON "shop_order" ("c")'], created=True),
        {"create-table": "low"},
    ),
    "nullable column": (op("AddField", [ADD_COL + " NULL;"], field=field(null=True)), {"add-nullable-column": "low"}),
    "db_default constant": (
        op("AddField", [ADD_COL + " DEFAULT 0 NOT NULL;"], field=field(db_default=True, db_default_kind="constant")),
        {"add-column-db-default": "low"},
    ),
    "db_default volatile expression": (
        op("AddField", [ADD_COL + " DEFAULT random() NOT NULL;"],
           field=field(db_default=True, db_default_kind="expression")),
        {"add-column-volatile-db-default": "medium"},
    ),
    "NOT NULL with only a Django default": (
        op("AddField", [ADD_COL + " DEFAULT 0 NOT NULL;", 'ALTER TABLE "shop_order" ALTER COLUMN "x" DROP DEFAULT;'],
           field=field(has_default=True)),
        {"not-null-django-default": "high"},
    ),
    "NOT NULL without any default": (
        op("AddField", [ADD_COL + " NOT NULL;"], field=field()), {"not-null-no-default": "high"},
    ),
    "NOT NULL Django default on a table of this plan": (
        op("AddField", [ADD_COL + " DEFAULT 0 NOT NULL;"], created=True, field=field(has_default=True)),
        {"add-column-new-table": "low"},
    ),
    "foreign key column validated under lock": (
        op("AddField", [ADD_COL.replace('"x" integer', '"c_id" bigint') + " NULL;",
                        'ALTER TABLE "shop_order" ADD CONSTRAINT "fk" FOREIGN KEY ("c_id") REFERENCES "c" ("id") '
                        "DEFERRABLE INITIALLY DEFERRED;",
                        'CREATE INDEX "shop_order_c_id" ON "shop_order" ("c_id");'],
           field=field(null=True, is_relation=True)),
        {"add-nullable-column": "low", "add-constraint-validating": "medium", "create-index-blocking": "medium"},
    ),
    "foreign key NOT VALID": (
        op("RunSQL", run_sql={
            "sql": ['ALTER TABLE "shop_order" ADD CONSTRAINT fk FOREIGN KEY (c) REFERENCES c NOT VALID'],
            "reverse_sql_given": True,
        }),
        {"catalog-change": "low"},
    ),
    "check constraint": (
        op("AddConstraint", ['ALTER TABLE "shop_order" ADD CONSTRAINT "pos" CHECK ("qty" > 0);']),
        {"add-constraint-validating": "medium"},
    ),
    "unique constraint": (
        op("AddConstraint", ['ALTER TABLE "shop_order" ADD CONSTRAINT "u" UNIQUE ("code");']),
        {"add-unique-constraint": "medium"},
    ),
    "blocking index": (
        op("AddIndex", ['CREATE INDEX "i" ON "shop_order" ("sku");']), {"create-index-blocking": "medium"},
    ),
    "concurrent index": (
        op("AddIndexConcurrently", ['CREATE INDEX CONCURRENTLY "i" ON "shop_order" ("sku");']),
        {"catalog-change": "low"},
    ),
    "type change": (
        op("AlterField", ['ALTER TABLE "shop_order" ALTER COLUMN "v" TYPE bigint USING "v"::bigint;'],
           field=field(db_type="bigint"), field_before=field(db_type="integer")),
        {"alter-column-type": "medium"},
    ),
    "varchar widened: no rewrite": (
        op("AlterField", ['ALTER TABLE "shop_order" ALTER COLUMN "s" TYPE varchar(64);'],
           field=field(db_type="varchar(64)"), field_before=field(db_type="varchar(20)")),
        {"alter-column-type-no-rewrite": "low"},
    ),
    "varchar narrowed: rewrite": (
        op("AlterField", ['ALTER TABLE "shop_order" ALTER COLUMN "s" TYPE varchar(10);'],
           field=field(db_type="varchar(10)"), field_before=field(db_type="varchar(20)")),
        {"alter-column-type": "medium"},
    ),
    "set not null": (
        op("AlterField", ['ALTER TABLE "shop_order" ALTER COLUMN "s" SET NOT NULL;'], field=field()),
        {"alter-field-set-not-null": "high"},
    ),
    "RunPython without reverse": (
        op("RunPython", table=None, run_python={"code": "m.f", "reverse_code_given": False}),
        {"run-python": "medium", "run-python-irreversible": "medium"},
    ),
    "RunPython with reverse": (
        op("RunPython", table=None, run_python={"code": "m.f", "reverse_code_given": True}), {"run-python": "medium"},
    ),
    "RunSQL without reverse": (
        op("RunSQL", table=None, run_sql={"sql": ["SELECT 1"], "reverse_sql_given": False}),
        {"run-sql-irreversible": "medium"},
    ),
    "RunSQL update of an existing table": (
        op("RunSQL", table=None, run_sql={"sql": ["UPDATE shop_order SET x = 1 WHERE x IS NULL"],
                                          "reverse_sql_given": True}),
        {"raw-sql-data-change": "medium"},
    ),
    "RunSQL drop": (
        op("RunSQL", table=None, run_sql={"sql": ["DROP TABLE shop_legacy"], "reverse_sql_given": True}),
        {"raw-sql-destructive": "high"},
    ),
    "RemoveField": (op("RemoveField", ['ALTER TABLE "shop_order" DROP COLUMN "x" CASCADE;']), {"remove-field": "high"}),
    "RemoveField on a table of this plan": (op("RemoveField", ["..."], created=True), {"drop-on-new-table": "low"}),
    "DeleteModel": (op("DeleteModel", ['DROP TABLE "shop_order" CASCADE;']), {"delete-model": "high"}),
    "RenameField": (
        op("RenameField", ['ALTER TABLE "shop_order" RENAME COLUMN "a" TO "b";']), {"rename-field": "high"},
    ),
    "RenameModel": (
        op("RenameModel", ['ALTER TABLE "shop_order" RENAME TO "shop_purchase";']), {"rename-model": "high"},
    ),
    "help_text only": (op("AlterField", [], field=field()), {"state-only": "none"}),
    "SQL depends on the live schema": (
        op("AlterUniqueTogether", [], sql_error="ValueError: Found wrong number (0) of constraints"),
        {"sql-depends-on-live-schema": "medium"},
    ),
}


@pytest.mark.parametrize("facts,expected", CASES.values(), ids=list(CASES))
def test_operation_verdicts(facts, expected):
    verdicts = _rules.judge_operation(facts)
    assert {v["rule"]: v["risk"] for v in verdicts} == expected
    for item in verdicts:
        rule = _rules.RULES[item["rule"]]
        assert (item["title"], item["why"], item["alternative"]) == (rule.title, rule.why, rule.alternative)


@pytest.mark.parametrize(
    "stats,risk,decided",
    [
        (None, "medium", "size unknown"),  # unknown table: the rule's own risk
        ({"rows": -1, "bytes": 8192}, "medium", "row count unknown"),  # never analyzed
        ({"rows": 0, "bytes": 8192}, "low", "rows <= tiny_table_rows 10,000"),  # analyzed and empty
        ({"rows": 5000, "bytes": 10**6}, "low", "rows <= tiny_table_rows 10,000"),
        ({"rows": 50_000, "bytes": 10**7}, "medium", "between tiny_table_rows 10,000 and large_table_rows"),
        ({"rows": 2_000_000, "bytes": 10**8}, "high", "~2,000,000 rows, 95.4 MiB: rows >= large_table_rows 1,000,000"),
        ({"rows": 10, "bytes": 2 * 1024**3}, "high", "size >= large_table_bytes 1,024.0 MiB"),  # bloat / toast
    ],
)
def test_size_sensitive_rules_follow_the_table_size(stats, risk, decided):
    facts = op("AddIndex", ['CREATE INDEX "i" ON "shop_order" ("sku");'])
    tables = {"shop_order": stats} if stats else {}
    (item,) = _rules.judge_operation(facts, tables)
    assert item["rule"] == "create-index-blocking" and item["risk"] == risk
    assert decided in item["decided_by"], item["decided_by"]
    assert item["lock"] == "SHARE" and item["work"] == "index build" and item["backward_incompatible"] is False
    assert item["table"] == "shop_order" and item["statement"].startswith("CREATE INDEX")
    if stats:
        assert "shop_order" in item["detail"] and item["table_stats"] == stats


@pytest.mark.parametrize(
    "thresholds,stats,risk,decided",
    [
        ({"large_table_rows": 40_000}, {"rows": 50_000, "bytes": 10**7}, "high", "large_table_rows 40,000"),
        ({"tiny_table_rows": 100_000}, {"rows": 50_000, "bytes": 10**7}, "low", "tiny_table_rows 100,000"),
        ({"large_table_bytes": 2**20}, {"rows": 50_000, "bytes": 10**7}, "high", "large_table_bytes 1.0 MiB"),
        ({"busy_table_writes_per_second": 100}, {"rows": 50_000, "bytes": 10**7, "writes_per_second": 250.0},
         "high", "250.0 writes/s: writes/s >= busy_table_writes_per_second 100"),
        ({"busy_table_writes_per_second": 100}, {"rows": 50_000, "bytes": 10**7, "writes_per_second": 20.0},
         "medium", "between tiny_table_rows"),
        ({"busy_table_writes_per_second": 100}, {"rows": 500, "bytes": 10**5, "writes_per_second": 900.0},
         "low", "tiny_table_rows 10,000"),  # a tiny table is quick to lock whatever its write rate
        ({}, {"rows": 50_000, "bytes": 10**7, "writes_per_second": 900.0}, "medium", "between"),  # busy off by default
    ],
)
def test_thresholds_are_parameters(thresholds, stats, risk, decided):
    facts = op("AddIndex", ['CREATE INDEX "i" ON "shop_order" ("sku");'])
    (item,) = _rules.judge_operation(facts, {"shop_order": stats}, _rules.Thresholds.from_params(thresholds))
    assert item["risk"] == risk and decided in item["decided_by"], item["decided_by"]


@pytest.mark.parametrize(
    "params,message",
    [
        ({"tiny_table_rows": 10, "large_table_rows": 5}, "tiny_table_rows must be smaller"),
        ({"large_table_rows": -1}, "large_table_rows must be an integer >= 0"),
        ({"busy_table_writes_per_second": -2}, "busy_table_writes_per_second must be a number >= 0"),
        ({"huge": 1}, "unknown thresholds: huge"),
    ],
)
def test_bad_thresholds_say_what_to_change(params, message):
    with pytest.raises(ValueError, match=message):
        _rules.Thresholds.from_params(params)


def test_backward_incompatible_is_high_whatever_the_size():
    facts = op("RemoveField", ["ALTER TABLE x DROP COLUMN y"], table="shop_order")
    (item,) = _rules.judge_operation(facts, {"shop_order": {"rows": 0, "bytes": 8192}})
    assert item["risk"] == "high" and item["backward_incompatible"] is True
    assert "backward-incompatible" in item["decided_by"]


def test_failed_prechecks_become_will_fail_verdicts():
    facts = op("AlterField", ['ALTER TABLE "shop_order" ALTER COLUMN "sku" SET NOT NULL;'], table="shop_order")
    facts["prechecks"] = [
        {"kind": "nulls", "table": "shop_order", "columns": ["sku"], "status": "fail", "found": 3,
         "message": "3 NULL value(s) in shop_order.sku: SET NOT NULL will fail"},
        {"kind": "duplicates", "table": "shop_order", "columns": ["sku"], "status": "timeout", "found": 0,
         "message": "not concluded within 5.0 s"},
    ]
    rules = {v["rule"]: v for v in _rules.judge_operation(facts, {})}
    assert rules["will-fail-nulls"]["risk"] == "medium" and "3 NULL" in rules["will-fail-nulls"]["detail"]
    assert "will-fail-duplicates" not in rules  # a timeout is not a failure; the report lists it


def _backwards(*ops, name="shop.0005_x"):
    item = migration(name, *ops)
    item["direction"] = "backwards"
    return item


def test_backwards_plan_verdicts():
    drop = op("AddField", ['ALTER TABLE "shop_order" DROP COLUMN "note" CASCADE;'], table="shop_order")
    irreversible = op("RunPython", [], reversible=False, sql_error="IrreversibleError: no reverse_code")
    fine = op("AlterModelOptions", [])
    tables = {"shop_order": {"rows": 10, "bytes": 8192}}
    judged = [
        _rules.judge_migration(_backwards(drop), tables),
        _rules.judge_migration(_backwards(irreversible, name="shop.0004_x"), tables),
        _rules.judge_migration(_backwards(fine, name="shop.0003_x"), tables),
    ]
    assert [(m["risk"], m["reversible"]) for m in judged] == [("high", True), ("high", False), ("low", True)]
    assert {v["rule"] for v in judged[0]["verdicts"]} == {"unapply-drops-data"}
    assert {v["rule"] for v in judged[1]["verdicts"]} == {"unapply-irreversible"}
    assert {v["rule"] for v in judged[2]["verdicts"]} == {"unapply-reversible"}
    assert judged[0]["sql"][0].startswith("-- (reverse)")


def test_size_does_not_soften_backward_incompatible_rules():
    facts = op("RemoveField", ['ALTER TABLE "shop_order" DROP COLUMN "x";'])
    (item,) = _rules.judge_operation(facts, {"shop_order": {"rows": 0, "bytes": 0}})
    assert item["risk"] == "high"


def migration(mid, *ops, atomic=True):
    return {"id": mid, "app_label": mid.split(".")[0], "name": mid.split(".")[1], "atomic": atomic,
            "operations": [dict(o, index=i) for i, o in enumerate(ops)]}


def test_judge_migration_aggregates():
    judged = _rules.judge_migration(
        migration(
            "shop.0002_x",
            op("AddField", [ADD_COL + " NULL;"], field=field(null=True)),
            op("RunSQL", table=None, run_sql={"sql": ["SELECT 1"], "reverse_sql_given": False}, reversible=False),
            op("AlterUniqueTogether", [], sql_error="ValueError: boom"),
            atomic=False,
        )
    )
    assert judged["risk"] == "medium"
    assert judged["reversible"] is False
    assert judged["sql_error"] == "operation 2 (AlterUniqueTogether): ValueError: boom"
    assert judged["sql"][:2] == ["-- AddField", ADD_COL + " NULL;"]
    rules = [(v["rule"], v["operation"]) for v in judged["verdicts"]]
    assert rules == [
        ("add-nullable-column", 0), ("run-sql-irreversible", 1), ("sql-depends-on-live-schema", 2),
        ("non-atomic-partial-apply", None),
    ]
    assert [o["risk"] for o in judged["operations"]] == ["low", "medium", "medium"]


def _plan():
    return [
        _rules.judge_migration(migration("shop.0002_stock", op("AddField", [ADD_COL], field=field(has_default=True)))),
        _rules.judge_migration(migration("shop.0003_drop", op("RemoveField", ["ALTER TABLE x DROP COLUMN y"]))),
        _rules.judge_migration(migration("shop.0004_idx", op("AddIndex", ['CREATE INDEX "i" ON "shop_order" ("a")']))),
    ]


def waivers(*items):
    parsed, invalid = _rules.parse_waivers([dict(item, approved_by=item.get("approved_by", "dba")) for item in items])
    assert invalid == []
    return parsed


def test_gate_blocks_above_max_risk():
    result = _rules.gate(_plan(), "medium", [], TODAY)
    assert result["blocked"] is True
    assert len(result["reasons"]) == 2
    assert result["reasons"][0].startswith("shop.0002_stock operation 0: not-null-django-default is high")
    assert _rules.gate(_plan(), "high", [], TODAY)["blocked"] is False
    low = _rules.gate(_plan(), "low", [], TODAY)
    assert [r.split(":")[0] for r in low["reasons"]] == [
        "shop.0002_stock operation 0", "shop.0003_drop operation 0", "shop.0004_idx operation 0"]


def test_gate_waivers_valid_rule_specific_and_expired():
    result = _rules.gate(
        _plan(),
        "medium",
        waivers(
            {"migration": "shop.0002_stock", "rule": "not-null-django-default", "reason": "worker first",
             "expires": "2030-06-15"},  # last valid day
            {"migration": "shop.0003_drop", "rule": "remove-field", "reason": "column unused since 1.4",
             "expires": "2030-06-14"},
            {"migration": "shop.0004_idx", "rule": "create-index-blocking", "reason": "not needed",
             "expires": "2031-01-01"},
        ),
        TODAY,
    )
    assert result["blocked"] is True
    assert [w["migration"] for w in result["waived"]] == ["shop.0002_stock"]
    assert result["waived"][0]["reason"] == "worker first" and result["waived"][0]["approved_by"] == "dba"
    assert result["expired_waivers"] == [
        {"position": 2, "migration": "shop.0003_drop", "rule": "remove-field", "reason": "column unused since 1.4",
         "approved_by": "dba", "expires": "2030-06-14"}
    ]
    assert len(result["reasons"]) == 1 and "waiver 2 expired on 2030-06-14" in result["reasons"][0]
    assert [w["migration"] for w in result["unused_waivers"]] == ["shop.0004_idx"]


def test_waiver_for_another_rule_does_not_apply():
    result = _rules.gate(
        _plan()[:1], "medium",
        waivers({"migration": "shop.0002_stock", "rule": "remove-field", "reason": "r", "expires": "2031-01-01"}),
        TODAY,
    )
    assert result["blocked"] is True and result["waived"] == []


@pytest.mark.parametrize(
    "waiver,message",
    [
        ({"migration": "shop", "expires": "2030-01-01"}, "app_label.migration_name"),
        ({"migration": "shop.0001_x", "reason": " ", "expires": "2030-01-01"}, "reason is missing"),
        ({"migration": "shop.0001_x", "expires": "next week"}, "YYYY-MM-DD"),
        ({"migration": "shop.0001_x", "expires": None}, "YYYY-MM-DD"),
        ({"migration": "shop.0001_x", "rule": "no-such-rule", "expires": "2030-01-01"}, "unknown rule"),
        ({"migration": "shop.0001_x", "rule": None, "expires": "2030-01-01"}, "rule is missing"),
        ({"migration": "shop.0001_x", "approved_by": "", "expires": "2030-01-01"}, "approved_by is missing"),
    ],
)
def test_incomplete_waivers_do_not_count_and_say_why(waiver, message):
    complete = {"rule": "remove-field", "reason": "r", "approved_by": "dba"}
    valid, invalid = _rules.parse_waivers([dict(complete, **waiver)])
    assert valid == [] and len(invalid) == 1
    assert len(invalid[0]["problems"]) == 1 and message in invalid[0]["problems"][0], invalid[0]["problems"]
    # The gate does not apply it and says so next to the verdict it would have covered.
    plan = _plan()[1:2]
    invalid[0]["migration"] = "shop.0003_drop"
    result = _rules.gate(plan, "medium", valid, TODAY, invalid)
    assert result["blocked"] and "waiver 1 does not count" in result["reasons"][0]
    assert result["invalid_waivers"][0]["problems"] == invalid[0]["problems"]


def test_assess_plan_and_markdown():
    reply = {
        "target": {"database": "shop", "host": "db", "port": 5432},
        "plan": [migration("shop.0002_stock", op("AddField", [ADD_COL], field=field(has_default=True)))],
        "missing_migrations": {"shop": [{"name": "0003_auto", "operations": ["Add field y"]}]},
        "tables": {"shop_order": {"rows": 10, "bytes": 8192}},
    }
    result = _rules.assess_plan(reply, "medium", [], TODAY)
    assert result["pending"] == ["shop.0002_stock"]
    assert result["highest_risk"] == "high"
    assert result["missing_migrations"] == {"shop": ["0003_auto"]}
    md = result["report_markdown"]
    assert "| 1 | shop.0002_stock | high | yes | AddField | not-null-django-default (high) |" in md
    assert "**BLOCKED**" in md and "Missing migrations" in md and "shop: 0003_auto" in md
    empty = _rules.assess_plan({"plan": [], "target": {}}, "medium", [], TODAY)
    assert empty["highest_risk"] == "none" and empty["gate"]["blocked"] is False


def test_registry_is_consistent():
    for rule in _rules.RULES.values():
        assert rule.risk in _rules.RISK_LEVELS
        assert rule.title and rule.why and rule.alternative
        assert rule.level in ("django", "postgresql", "data", "rollback")
        assert rule.lock and rule.work
        assert not rule.breaks_old_code or rule.risk == "high", f"{rule.id}: backward-incompatible is high"
    assert len(_rules.RULES) == len(_rules._RULE_LIST)


def test_docs_rules_md_is_generated_from_the_registry():
    path = Path(__file__).resolve().parents[4] / "docs" / "rules.md"
    text = path.read_text(encoding="utf-8")
    for rule_id in _rules.RULES:
        assert f"## {rule_id}\n" in text
    # the devtools generator (with the corpus examples) is the one that wrote it
    proc = subprocess.run([sys.executable, str(path.parents[1] / "devtools" / "gen_rules_doc.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_post_phase_grades_what_is_left_once_the_old_code_is_gone():
    tables = {"shop_order": {"rows": 50_000, "bytes": 10**7}}
    drop = op("RemoveField", ['ALTER TABLE "shop_order" DROP COLUMN "legacy" CASCADE;'])
    not_null = op("AlterField", ['ALTER TABLE "shop_order" ALTER COLUMN "sku" SET NOT NULL;'])
    rename = op("RenameField", ['ALTER TABLE "shop_order" RENAME COLUMN "a" TO "b";'])
    pre = _rules.judge_migration(migration("shop.0009_x", drop, not_null, rename), tables)
    post = _rules.judge_migration(dict(migration("shop.0009_x", drop, not_null, rename), phase="post"), tables)
    assert [o["risk"] for o in pre["operations"]] == ["high", "high", "high"]
    # dropping data nobody reads is medium, the NOT NULL scan is graded by size, a rename still breaks the new code
    assert [o["risk"] for o in post["operations"]] == ["medium", "medium", "high"]
    assert "post-deploy phase" in post["operations"][0]["verdicts"][0]["decided_by"]
    big = _rules.judge_migration(dict(migration("shop.0009_x", not_null), phase="post"),
                                 {"shop_order": {"rows": 5_000_000, "bytes": 10**9}})
    assert big["risk"] == "high"


def test_a_migration_mixing_expand_and_contract_is_flagged():
    add = op("AddField", [ADD_COL + " NULL;"], field=field(null=True))
    drop = op("RemoveField", ['ALTER TABLE "shop_order" DROP COLUMN "legacy" CASCADE;'])
    mixed = _rules.judge_migration(migration("shop.0009_x", add, drop))
    assert ("mixed-phase-migration", None) in [(v["rule"], v["operation"]) for v in mixed["verdicts"]]
    only_add = _rules.judge_migration(migration("shop.0009_x", add))
    assert "mixed-phase-migration" not in {v["rule"] for v in only_add["verdicts"]}
