# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration plan as a SARIF 2.1.0 log, for code scanning UIs (GitHub, GitLab, IDEs).

One result per verdict riskier than "none", located at the operation's line in the
migration file; one reporting descriptor per rule those results use. Waived verdicts
carry an accepted suppression with the waiver's reason.
Nothing here imports Ansible or Django (module_utils run on the target, Python 3.10+).
"""

from __future__ import annotations

import ast
import os
import pathlib
import urllib.parse

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
TOOL_NAME = "safedeploy.django"
INFORMATION_URI = "https://github.com/safedeploy/django"
FINGERPRINT = "safedeployMigrationVerdict/v1"
BASE_ID = "PROJECTROOT"

# SARIF levels: a verdict's graded risk -> result level; a rule's default risk -> its default level.
LEVELS = {"high": "error", "medium": "warning", "low": "note", "none": "none"}
# Facts of a verdict copied into its result's properties when the rule engine gives them.
_VERDICT_FACTS = ("table", "lock", "work", "backward_incompatible", "decided_by", "statement")


def _list_elements(node) -> list | None:
    """Elements of ``[...]``, ``(...)`` or a sum of them; None when the positions are not static."""
    if isinstance(node, (ast.List, ast.Tuple)):
        if any(isinstance(elt, ast.Starred) for elt in node.elts):
            return None
        return list(node.elts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _list_elements(node.left), _list_elements(node.right)
        if left is None or right is None:
            return None
        return left + right
    return None


def _parse(path: str) -> tuple[int | None, dict[int, int]]:
    """(line of ``class Migration``, operation index -> line) of a migration file; (None, {}) on any error."""
    try:
        with open(path, "rb") as handle:
            tree = ast.parse(handle.read(), filename=path)
    except Exception:  # noqa: BLE001 - unreadable or not Python: no lines, never a failure
        return None, {}
    class_line, lines = None, {}
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name == "Migration"):
            continue
        class_line, lines = node.lineno, {}
        for statement in node.body:
            if isinstance(statement, ast.Assign):
                named = any(isinstance(t, ast.Name) and t.id == "operations" for t in statement.targets)
            elif isinstance(statement, ast.AnnAssign):
                named = isinstance(statement.target, ast.Name) and statement.target.id == "operations"
            else:
                continue
            if not named or statement.value is None:
                continue
            elements = _list_elements(statement.value)
            # The last assignment wins, as in Python; one that cannot be read statically hides the earlier ones.
            lines = {index: element.lineno for index, element in enumerate(elements or [])}
    return class_line, lines


def operation_lines(path: str) -> dict[int, int]:
    """Map each operation index of the migration file at ``path`` to the line of its element in
    ``Migration.operations``; {} when the file cannot be read or parsed."""
    return _parse(path)[1]


def _rule_field(rule, name: str, default=None):
    if isinstance(rule, dict):
        return rule.get(name, default)
    return getattr(rule, name, default)


def _camel(rule_id: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in rule_id.replace("_", "-").split("-") if part)


def _sentence(text: str) -> str:
    return (text or "").strip().rstrip(".")


def _steps_markdown(steps) -> str:
    return "\n".join(f"{number}. {step}" for number, step in enumerate(steps, start=1))


def _descriptor(rule_id: str, rule, example: dict) -> dict:
    """A reportingDescriptor from the registry's rule (or, for a rule it lacks, from a verdict)."""
    title = _rule_field(rule, "title") or example.get("title") or rule_id
    why = _rule_field(rule, "why") or example.get("why") or title
    alternative = _rule_field(rule, "alternative") or example.get("alternative") or "See the rule's documentation."
    steps = list(_rule_field(rule, "sequence") or example.get("sequence") or [])
    risk = _rule_field(rule, "risk") or example.get("risk") or "none"
    level = _rule_field(rule, "level") or "django"
    return {
        "id": rule_id,
        "name": _camel(rule_id),
        "shortDescription": {"text": title},
        "fullDescription": {"text": why},
        "help": {
            "text": alternative,
            "markdown": f"**{title}** (default risk **{risk}**, {level} level)\n\n"
            f"*Why:* {why}\n\n*Safer:* {alternative}"
            + (f"\n\n*Safe sequence:*\n\n{_steps_markdown(steps)}" if steps else ""),
        },
        "defaultConfiguration": {"level": LEVELS.get(risk, "warning")},
        "properties": _descriptor_properties(rule, level, risk),
    }


def _descriptor_properties(rule, level: str, risk: str) -> dict:
    properties = {"tags": ["migration", level], "risk": risk}
    if _rule_field(rule, "breaks_old_code"):
        properties["tags"].append("backward-incompatible")
    for key in ("lock", "work"):
        if _rule_field(rule, key):
            properties[key] = _rule_field(rule, key)
    return properties


def _project_uri(project_path: str) -> str:
    uri = pathlib.PurePosixPath(os.path.abspath(project_path)).as_uri()
    return uri if uri.endswith("/") else uri + "/"


def _artifact_location(path: str, project_path: str | None) -> dict:
    """Relative to PROJECTROOT when the file is inside the project, else an absolute file URI."""
    if project_path:
        for base, target in (
            (os.path.abspath(project_path), os.path.abspath(path)),
            (os.path.realpath(project_path), os.path.realpath(path)),
        ):
            relative = os.path.relpath(target, base)
            if relative != os.curdir and relative != os.pardir and not relative.startswith(os.pardir + os.sep):
                uri = urllib.parse.quote(pathlib.PurePath(relative).as_posix())
                return {"uri": uri, "uriBaseId": BASE_ID}
    return {"uri": pathlib.PurePosixPath(os.path.abspath(path)).as_uri()}


def _reason_prefix(migration_id: str, verdict: dict) -> str:
    """How _rules.gate() starts the reason line of this verdict."""
    where = migration_id
    if verdict.get("operation") is not None:
        where += f" operation {verdict['operation']}"
    return f"{where}: {verdict['rule']} "


def _message(migration: dict, verdict: dict, descriptions: dict) -> dict:
    index = verdict.get("operation")
    if index is None:
        where = f"{migration['id']} (whole migration)"
    else:
        description = descriptions.get(index)
        where = f"{migration['id']} operation {index}" + (f" ({description})" if description else "")
    if migration.get("direction") == "backwards":
        where = "unapplying " + where
    text = (
        f"{where}: {verdict.get('title') or verdict['rule']} — {_sentence(verdict.get('why'))}. "
        f"Safer: {_sentence(verdict.get('alternative'))}."
    )
    if verdict.get("detail"):
        text += f" Detail: {verdict['detail']}"
    steps = list(verdict.get("sequence") or [])
    if not steps:
        return {"text": text}
    numbered = " ".join(f"({number}) {step}" for number, step in enumerate(steps, start=1))
    return {
        "text": f"{text} Safe sequence: {numbered}",
        "markdown": f"{text}\n\n*Safe sequence:*\n\n{_steps_markdown(steps)}",
    }


def render(result: dict, rules: dict, project_path: str | None, version: str | None = None) -> dict:
    """The SARIF log of a django_migration_plan result (``plan``, ``gate``...) judged with ``rules``."""
    gate = result.get("gate") or {}
    reasons = list(gate.get("reasons") or [])
    waivers = {
        (w.get("migration"), w.get("operation"), w.get("rule")): w for w in gate.get("waived") or []
    }
    order = {rule_id: position for position, rule_id in enumerate(rules)}
    parsed: dict[str, tuple[int | None, dict[int, int]]] = {}
    used: dict[str, dict] = {}  # rule id -> first verdict using it
    results = []  # ruleIndex is filled in once the used rules are known

    for migration in result.get("plan") or []:
        migration_id = migration.get("id") or f"{migration.get('app_label')}.{migration.get('name')}"
        migration = dict(migration, id=migration_id)
        descriptions = {
            op.get("index"): op.get("description") or op.get("type")
            for op in migration.get("operations") or []
        }
        path = migration.get("file")
        if path and path not in parsed:
            parsed[path] = _parse(path)
        for verdict in migration.get("verdicts") or []:
            risk = verdict.get("risk")
            if risk not in LEVELS or risk == "none" or not verdict.get("rule"):
                continue
            rule_id = verdict["rule"]
            used.setdefault(rule_id, verdict)
            index = verdict.get("operation")
            waiver = waivers.get((migration_id, index, rule_id))
            prefix = _reason_prefix(migration_id, verdict)
            item = {
                "ruleId": rule_id,
                "level": LEVELS[risk],
                "message": _message(migration, verdict, descriptions),
                "partialFingerprints": {
                    FINGERPRINT: f"{migration_id}:{'migration' if index is None else index}:{rule_id}"
                },
                "properties": {
                    "risk": risk,
                    "migration": migration_id,
                    "operation": index,
                    "blocked": waiver is None and any(reason.startswith(prefix) for reason in reasons),
                    "waived": waiver is not None,
                },
            }
            if migration.get("direction"):
                item["properties"]["direction"] = migration["direction"]
            for key in _VERDICT_FACTS:
                if verdict.get(key) is not None:
                    item["properties"][key] = verdict[key]
            if path:
                class_line, lines = parsed[path]
                line = class_line if index is None else lines.get(index)
                item["locations"] = [
                    {
                        "physicalLocation": {
                            "artifactLocation": _artifact_location(path, project_path),
                            "region": {"startLine": line or 1},
                        },
                        "logicalLocations": [{"fullyQualifiedName": migration_id, "kind": "module"}],
                    }
                ]
            if waiver is not None:
                approved = f", approved by {waiver['approved_by']}" if waiver.get("approved_by") else ""
                item["suppressions"] = [
                    {
                        "kind": "external",
                        "status": "accepted",
                        "justification": f"{waiver.get('reason')} (waiver{approved}, until {waiver.get('expires')})",
                    }
                ]
            results.append(item)

    rule_ids = sorted(used, key=lambda rule_id: (order.get(rule_id, len(order)), rule_id))
    index_of = {rule_id: position for position, rule_id in enumerate(rule_ids)}
    for item in results:
        item["ruleIndex"] = index_of[item["ruleId"]]

    driver = {
        "name": TOOL_NAME,
        "informationUri": INFORMATION_URI,
        "rules": [_descriptor(rule_id, rules.get(rule_id), used[rule_id]) for rule_id in rule_ids],
    }
    if version:
        driver["version"] = str(version)
    run = {
        "tool": {"driver": driver},
        "invocations": [
            {
                "executionSuccessful": True,
                "properties": {
                    "gate_blocked": bool(gate.get("blocked")),
                    "max_risk": gate.get("max_risk"),
                    "highest_risk": result.get("highest_risk"),
                    "missing_migrations": result.get("missing_migrations") or {},
                },
            }
        ],
        "results": results,
        "columnKind": "unicodeCodePoints",
    }
    if project_path:
        run["originalUriBaseIds"] = {BASE_ID: {"uri": _project_uri(project_path)}}
    return {"$schema": SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}
