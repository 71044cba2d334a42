"""Safe sequences: every risky rule names the concrete steps, and they name things that exist."""

from __future__ import annotations

import datetime
import importlib
import re
from pathlib import Path

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils import _rules

REPO = Path(__file__).resolve().parents[4]
TODAY = datetime.date(2030, 6, 15)
RISKY = [rule for rule in _rules._RULE_LIST if _rules.RISK_RANK[rule.risk] > _rules.RISK_RANK["low"]]

# Where the Django names of the steps must come from (Django 5.2 in the venv).
DJANGO_MODULES = ("django.contrib.postgres.operations", "django.db.migrations", "django.db.models")
_RE_CODE = re.compile(r"`([^`]+)`")
_RE_CALL = re.compile(r"(?<![\w.])(?:models\.)?([A-Z](?:[a-z]\w*)?)\s*\(")  # CamelCase or Q, not SQL
_RE_NAME = re.compile(r"^(?:models\.)?([A-Z][a-z]\w*)$")
_RE_NOOP = re.compile(r"\b(RunPython|RunSQL)\.(\w+)")
_RE_COLLECTION = re.compile(r"^safedeploy\.django\.(\w+)$")
_RE_RULE_ID = re.compile(r"^[a-z]+(?:-[a-z]+)+$")
_RE_VARIABLE = re.compile(r"^((?:backfill|release|rollback)_\w+)")


def _django_names() -> dict[str, object]:
    names: dict[str, object] = {}
    for module_name in DJANGO_MODULES:
        module = importlib.import_module(module_name)
        names.update({name: getattr(module, name) for name in dir(module) if name[:1].isupper()})
    return names


def _ansible_text() -> str:
    files = list((REPO / "playbooks").glob("*.yml")) + list((REPO / "roles").rglob("*.yml"))
    return "\n".join(path.read_text(encoding="utf-8") for path in files)


def _problems(step: str, django: dict, ansible: str) -> tuple[list[str], int]:
    """What a step names that does not exist, and how many real names it checked."""
    problems, checked = [], 0
    for code in _RE_CODE.findall(step):
        names = set(_RE_CALL.findall(code))
        bare = _RE_NAME.match(code.strip())
        if bare:
            names.add(bare.group(1))
        for name in names:
            checked += 1
            if name not in django:
                problems.append(f"{name} is no Django 5.2 operation or model class (in `{code}`)")
        for owner, attribute in _RE_NOOP.findall(code):
            if not hasattr(django[owner], attribute):
                problems.append(f"{owner}.{attribute} does not exist")
        collection = _RE_COLLECTION.match(code)
        if collection:
            checked += 1
            name = collection.group(1)
            if not (REPO / "plugins" / "modules" / f"{name}.py").exists() and not (
                REPO / "playbooks" / f"{name}.yml"
            ).exists():
                problems.append(f"safedeploy.django.{name} is no module or playbook of the collection")
        if _RE_RULE_ID.match(code) and code not in _rules.RULES:
            problems.append(f"unknown rule {code}")
        variable = _RE_VARIABLE.match(code)
        if variable and not re.search(rf"\b{variable.group(1)}\b", ansible):
            problems.append(f"{variable.group(1)} is no variable of the playbooks or roles")
    return problems, checked


def test_the_checker_catches_made_up_names():
    django, ansible = _django_names(), _ansible_text()
    problems, checked = _problems(
        "`AddIndexConcurrentlyy(...)`, `safedeploy.django.django_magic`, `no-such-rule`, `backfill_sett`, "
        "`RunSQL.nope`, `models.UniqueIndex(fields=[])`",
        django, ansible,
    )
    assert len(problems) == 6 and checked == 3, problems
    assert _problems("`AddConstraintNotValid(\"m\", CheckConstraint(condition=Q(x__isnull=False)))`", django,
                     ansible) == ([], 3)


@pytest.mark.parametrize("rule", RISKY, ids=lambda rule: rule.id)
def test_every_risky_rule_has_a_sequence_of_real_names(rule):
    assert rule.sequence, f"{rule.id} has no safe sequence"
    assert isinstance(rule.sequence, tuple)
    django, ansible = _django_names(), _ansible_text()
    checked = 0
    for step in rule.sequence:
        assert isinstance(step, str) and step.strip() == step and len(step) > 20, step
        assert not re.match(r"^\d+[.)]", step), "the renderers number the steps"
        assert step.count("`") % 2 == 0, f"unbalanced backticks in {step!r}"
        problems, count = _problems(step, django, ansible)
        assert not problems, problems
        checked += count
    assert checked, f"{rule.id}: no step names a Django operation or a collection module/playbook"


def test_low_risk_rules_need_no_sequence():
    for rule in _rules._RULE_LIST:
        if rule not in RISKY:
            assert rule.sequence == (), rule.id


def test_the_sequences_name_the_operations_the_issue_asks_for():
    def text(rule_id):
        return " ".join(_rules.RULES[rule_id].sequence)

    for rule_id in ("alter-field-set-not-null", "not-null-no-default", "not-null-django-default", "will-fail-nulls"):
        steps = text(rule_id)
        order = [steps.index(name) for name in ("django_backfill", "AddConstraintNotValid(", "ValidateConstraint(",
                                                "AlterField(", "RemoveConstraint(")]
        assert order == sorted(order), rule_id
        assert "SHARE UPDATE EXCLUSIVE" in steps and "PostgreSQL 12+" in steps
    index = text("create-index-blocking")
    assert "AddIndexConcurrently(" in index and "atomic = False" in index
    assert "RemoveIndexConcurrently(" in text("drop-index-blocking")
    assert "UNIQUE USING INDEX" in text("add-unique-constraint") and "CONCURRENTLY" in text("add-unique-constraint")
    fk = text("add-constraint-validating")
    assert "NOT VALID" in fk and "SeparateDatabaseAndState(" in fk and "ValidateConstraint(" in fk
    rename = _rules.RULES["rename-field"].sequence
    assert [step.split(",")[0].split(":")[0] for step in rename] == [
        "Release 1", "After release 1", "Release 2", "Release 3", "Release 3", "Release 4"]
    assert 'safedeploy_phase = "post"' in rename[-1] and "RemoveField(" in rename[-1]
    # release N takes it out of Django's state only, release N+1 drops it after the rollout
    for rule_id, operation in (("remove-field", "RemoveField"), ("delete-model", "DeleteModel")):
        steps = text(rule_id)
        state_only = steps.index(f"SeparateDatabaseAndState(state_operations=[{operation}(")
        assert state_only < steps.index("Release N+1, post-deploy") < steps.index('safedeploy_phase = "post"')
    for rule_id in ("remove-field", "delete-model", "mixed-phase-migration", "alter-column-type"):
        assert 'safedeploy_phase = "post"' in text(rule_id) and "release_post_migrations" in text(rule_id), rule_id
    for rule_id in ("run-python", "raw-sql-data-change", "add-column-volatile-db-default", "dml-with-ddl"):
        assert "safedeploy.django.django_backfill" in text(rule_id), rule_id


def test_verdicts_carry_the_sequence():
    for rule in _rules._RULE_LIST:
        item = _rules.verdict(rule.id)
        assert item["sequence"] == list(rule.sequence)
    reply = {
        "plan": [{"id": "shop.0002_x", "operations": [
            {"index": 0, "type": "RemoveField", "table": "shop_order", "tables": ["shop_order"],
             "sql": ['ALTER TABLE "shop_order" DROP COLUMN "legacy" CASCADE;']},
        ]}],
        "tables": {"shop_order": {"rows": 10, "bytes": 8192}},
    }
    result = _rules.assess_plan(reply, "medium", [], TODAY)
    (item,) = result["plan"][0]["verdicts"]
    assert item["rule"] == "remove-field" and item["sequence"] == list(_rules.RULES["remove-field"].sequence)
    # the post-deploy regrading keeps it
    post = _rules.assess_plan(dict(reply, plan=[dict(reply["plan"][0], phase="post")]), "medium", [], TODAY)
    assert post["plan"][0]["verdicts"][0]["sequence"] == item["sequence"]


def test_markdown_findings_number_the_steps_once_per_rule():
    sql = 'ALTER TABLE "shop_order" ALTER COLUMN "{}" SET NOT NULL;'
    operations = [
        {"index": i, "type": "AlterField", "table": "shop_order", "tables": ["shop_order"], "sql": [sql.format(c)]}
        for i, c in enumerate(("a", "b"))
    ]
    reply = {"plan": [{"id": "shop.0003_not_null", "operations": operations}], "tables": {}}
    md = _rules.assess_plan(reply, "medium", [], TODAY)["report_markdown"]
    steps = _rules.RULES["alter-field-set-not-null"].sequence
    first = md.index("shop.0003_not_null op 0: `alter-field-set-not-null`")
    second = md.index("shop.0003_not_null op 1: `alter-field-set-not-null`")
    numbered = md[first:second]
    assert numbered.splitlines()[0].endswith("Safe sequence:")
    for number, step in enumerate(steps, start=1):
        assert f"\n  {number}. {step.replace('|', chr(92) + '|')}\n" in numbered
    assert md[second:].splitlines()[0].endswith("Safe sequence: as for `alter-field-set-not-null` above.")
    assert md.count(steps[0]) == 1
    # the migration's own verdict (two strong locks in one transaction) gets its steps too
    assert "`several-strong-locks`" in md and md.count("  1. ") == 2
    # Findings without a sequence stay single lines; low verdicts are not findings.
    assert "Safe sequence" not in _rules.assess_plan(
        {"plan": [{"id": "shop.0004_x", "operations": [
            {"index": 0, "type": "CreateModel", "table": "shop_new", "created_in_plan": True,
             "new_tables": ["shop_new"], "sql": ['CREATE TABLE "shop_new" (id int);']}]}]},
        "medium", [], TODAY)["report_markdown"]


def test_docs_show_every_sequence_as_numbered_steps():
    text = (REPO / "docs" / "rules.md").read_text(encoding="utf-8")
    assert "## Safe sequences" in text and "no package of migration operations" in text
    for rule in RISKY:
        section = text.split(f"\n## {rule.id}\n", 1)[1].split("\n## ", 1)[0]
        numbered = "\n".join(f"{number}. {step}" for number, step in enumerate(rule.sequence, start=1))
        assert f"*Safe sequence:*\n\n{numbered}\n" in section, rule.id


# -- the planner accepts its own sequences --------------------------------------------------


def _op(index, kind, *sql, table="shop_order"):
    return {"index": index, "type": kind, "description": kind, "table": table, "tables": [table],
            "new_tables": [], "created_in_plan": False, "reversible": True, "sql": list(sql), "sql_error": None}


ADD_CHECK = ('ALTER TABLE "shop_order" ADD CONSTRAINT "shop_order_sku_notnull" CHECK ("sku" IS NOT NULL) '
             "NOT VALID;")
VALIDATE = 'ALTER TABLE "shop_order" VALIDATE CONSTRAINT "shop_order_sku_notnull";'
SET_NOT_NULL = 'ALTER TABLE "shop_order" ALTER COLUMN "sku" SET NOT NULL;'
DROP_CHECK = 'ALTER TABLE "shop_order" DROP CONSTRAINT "shop_order_sku_notnull";'
BIG = {"shop_order": {"rows": 5_000_000, "bytes": 2 * 1024**3}}


def _plan(*migrations):
    reply = {"plan": [{"id": f"shop.{n:04d}_step", "atomic": True, "operations": ops}
                      for n, ops in enumerate(migrations, start=10)], "tables": BIG}
    return _rules.assess_plan(reply, "medium", [], TODAY)


def _rules_of(result):
    return [[v["rule"] for v in m["verdicts"]] for m in result["plan"]]


def test_not_null_sequence_in_one_release_passes_the_gate():
    result = _plan(
        [_op(0, "AddConstraintNotValid", ADD_CHECK)],
        [_op(0, "ValidateConstraint", VALIDATE)],
        [_op(0, "AlterField", SET_NOT_NULL), _op(1, "RemoveConstraint", DROP_CHECK)],
    )
    assert _rules_of(result) == [["catalog-change"], ["catalog-change"], ["catalog-change", "catalog-change"]]
    assert result["highest_risk"] == "low" and not result["gate"]["blocked"]


@pytest.mark.parametrize(
    "migrations",
    [
        # no validation at all
        ([_op(0, "AddConstraintNotValid", ADD_CHECK)], [_op(0, "AlterField", SET_NOT_NULL)]),
        # validated in the migration that added it: the scan ran under the ADD's ACCESS EXCLUSIVE lock
        ([_op(0, "AddConstraintNotValid", ADD_CHECK), _op(1, "ValidateConstraint", VALIDATE)],
         [_op(0, "AlterField", SET_NOT_NULL)]),
        # the CHECK was dropped again before SET NOT NULL
        ([_op(0, "AddConstraintNotValid", ADD_CHECK)], [_op(0, "ValidateConstraint", VALIDATE)],
         [_op(0, "RemoveConstraint", DROP_CHECK)], [_op(0, "AlterField", SET_NOT_NULL)]),
        # a CHECK on another column, or on another table
        ([_op(0, "AddConstraintNotValid", ADD_CHECK.replace('("sku"', '("name"'))],
         [_op(0, "ValidateConstraint", VALIDATE)], [_op(0, "AlterField", SET_NOT_NULL)]),
        ([_op(0, "AddConstraintNotValid", ADD_CHECK.replace("shop_order", "shop_item"), table="shop_item")],
         [_op(0, "ValidateConstraint", VALIDATE.replace("shop_order", "shop_item"), table="shop_item")],
         [_op(0, "AlterField", SET_NOT_NULL)]),
        # a CHECK that proves more than NOT NULL is not what SET NOT NULL can use alone
        ([_op(0, "RunSQL", ADD_CHECK.replace('"sku" IS NOT NULL', '"sku" IS NOT NULL OR "id" < 0'))],
         [_op(0, "ValidateConstraint", VALIDATE)], [_op(0, "AlterField", SET_NOT_NULL)]),
    ],
    ids=["not-validated", "validated-in-same-migration", "dropped", "other-column", "other-table", "other-check"],
)
def test_set_not_null_without_a_validated_check_is_still_flagged(migrations):
    result = _plan(*migrations)
    assert "alter-field-set-not-null" in _rules_of(result)[-1]
    assert result["gate"]["blocked"]


def test_judging_a_migration_alone_knows_nothing_of_the_plan():
    judged = _rules.judge_migration({"id": "shop.0012_x", "operations": [_op(0, "AlterField", SET_NOT_NULL)]}, BIG)
    assert [v["rule"] for v in judged["verdicts"]] == ["alter-field-set-not-null"]


def test_unique_using_an_index_built_concurrently_is_a_catalog_change():
    build = ('CREATE UNIQUE INDEX CONCURRENTLY "shop_order_sku_uniq" ON "shop_order" ("sku");')
    attach = 'ALTER TABLE "shop_order" ADD CONSTRAINT "shop_order_sku_uniq" UNIQUE USING INDEX "shop_order_sku_uniq";'
    reply = {"plan": [
        {"id": "shop.0010_idx", "atomic": False, "operations": [
            dict(_op(0, "RunSQL"), run_sql={"sql": [build], "reverse_sql_given": True})]},
        {"id": "shop.0011_uniq", "atomic": True, "operations": [_op(0, "SeparateDatabaseAndState", attach)]},
    ], "tables": BIG}
    result = _rules.assess_plan(reply, "medium", [], TODAY)
    assert _rules_of(result) == [["catalog-change", "non-atomic-migration"], ["catalog-change"]]
    # without USING INDEX the index is built under the lock
    plain = _rules.judge_sql(['ALTER TABLE "shop_order" ADD CONSTRAINT "u" UNIQUE ("sku");'], set(), BIG, raw=False)
    assert [v["rule"] for v in plain] == ["add-unique-constraint"]


def test_keyword_arguments_in_the_steps_exist_in_django():
    import inspect

    from django.contrib.postgres.operations import (
        AddConstraintNotValid,
        AddIndexConcurrently,
        RemoveIndexConcurrently,
        ValidateConstraint,
    )
    from django.db import migrations, models
    from django.db.models.query import QuerySet

    callables = (
        models.Field.__init__, models.ForeignKey.__init__, models.CharField.__init__, models.CheckConstraint.__init__,
        models.UniqueConstraint.__init__, models.Index.__init__, migrations.RunSQL.__init__,
        migrations.RunPython.__init__, migrations.SeparateDatabaseAndState.__init__, QuerySet.bulk_create,
    )
    known = {name for function in callables for name in inspect.signature(function).parameters}
    used = {
        keyword
        for rule in RISKY
        for step in rule.sequence
        for code in _RE_CODE.findall(step)
        for keyword in re.findall(r"\b([a-z_]+)=(?!=)", code)
        if not _RE_VARIABLE.match(keyword) and "__" not in keyword  # Q(<field>__isnull=...) lookups
    }
    assert used, "no keyword argument found: the pattern is wrong"
    assert used <= known, sorted(used - known)
    # The central snippets, built for real with Django 5.2.
    check = models.CheckConstraint(condition=models.Q(sku__isnull=False), name="order_sku_notnull")
    AddConstraintNotValid("order", check)
    ValidateConstraint("order", "order_sku_notnull")
    AddIndexConcurrently("order", models.Index(fields=["sku"], name="order_sku_idx"))
    RemoveIndexConcurrently("order", "order_sku_idx")
    migrations.SeparateDatabaseAndState(
        database_operations=[migrations.RunSQL("SELECT 1", reverse_sql=migrations.RunSQL.noop)],
        state_operations=[migrations.AddConstraint("order", models.UniqueConstraint(fields=["sku"], name="u"))],
    )
    with pytest.raises(TypeError):  # why a unique index needs RunSQL: AddConstraintNotValid takes CHECKs only
        AddConstraintNotValid("order", models.UniqueConstraint(fields=["sku"], name="u"))
