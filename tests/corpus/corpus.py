"""The labelled migration corpus: build its Django project, prepare a database, plan every case at once.

Layout:

- ``cases/<case>.py`` is one migration (``class Migration`` without dependencies) and its label
  ``CASE = {"risk": ..., "rules": [...], "why": ...}``.
- ``build_project(dest)`` writes a throwaway Django project: one app ``base`` whose real
  ``0001_initial`` creates the shared tables (``corpus_big`` ~1.2M rows, ``corpus_mid`` 50k
  rows, ``corpus_empty`` analyzed and empty), and one app ``c_<case>`` per case whose
  ``0001_base`` declares the same models *state-only* (SeparateDatabaseAndState, their
  ``db_table`` is the shared table) plus a ``legacy`` model with the default table name, and
  whose ``0002_case`` is the case file. Every case therefore runs on real, sized tables, and
  all cases are pending at once, each in its own app, so one planner run grades them all.
- ``prepare_database(env)`` migrates ``base``, fills and analyzes the tables, creates each
  app's ``legacy`` table and records every ``0001_base`` as applied.
- ``plan(project, env)`` runs ``_django_helper`` action "plan" (as ``_django_runner`` does)
  and grades the reply with ``_rules.assess_plan``; ``score(cases, graded)`` computes the figures.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE / "cases"
REPO = HERE.parent.parent
HELPER = REPO / "plugins" / "module_utils" / "_django_helper.py"
LEVELS = ("none", "low", "medium", "high")

BIG_ROWS = 1_200_000
MID_ROWS = 50_000

SETTINGS = '''\
import os
SECRET_KEY = "corpus"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = {apps!r}
if os.environ.get("CORPUS_LINTER"):
    INSTALLED_APPS = INSTALLED_APPS + ["django_migration_linter"]
    MIGRATION_LINTER_OPTIONS = {{"sql_analyser": "postgresql"}}
DATABASES = {{"default": {{
    "ENGINE": "django.db.backends.postgresql",
    "HOST": os.environ["PGHOST"], "PORT": os.environ["PGPORT"], "USER": os.environ["PGUSER"],
    "PASSWORD": os.environ["PGPASSWORD"], "NAME": os.environ["PGDATABASE"],
}}}}
'''

MANAGE = '''\
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "corpus_settings")
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
'''

# The shared base models; {state_only} selects the real (base app) or the state-only (case app) form.
BASE_MODELS = '''\
from django.db import migrations, models


def _fields():
    return [
        ("id", models.BigAutoField(primary_key=True, serialize=False)),
        ("name", models.CharField(max_length=100)),
        ("code", models.CharField(max_length=20)),
        ("qty", models.IntegerField()),
        ("note", models.TextField(null=True)),
        ("email", models.CharField(max_length=100, null=True)),
        ("created", models.DateTimeField(null=True)),
    ]


def _models(with_legacy):
    ops = [
        migrations.CreateModel(
            name=name,
            fields=_fields(),
            options={{"db_table": "corpus_" + name.lower(),
                      "indexes": [models.Index(fields=["code"], name="corpus_" + name.lower() + "_code_idx")]}},
        )
        for name in ("Big", "Mid", "Empty")
    ]
    if with_legacy:
        ops.append(migrations.CreateModel(
            name="Legacy",
            fields=[("id", models.BigAutoField(primary_key=True, serialize=False)),
                    ("title", models.CharField(max_length=50, null=True))],
        ))
    return ops


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = {operations}
'''


def load_cases() -> list[dict]:
    """Every case: id, app label, file and its CASE label."""
    cases = []
    for path in sorted(CASES_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        text = path.read_text()
        match = re.search(r"^CASE = (\{.*?^\})", text, re.M | re.S)
        if not match:
            raise ValueError(f"{path}: no CASE = {{...}} label")
        label = eval(match.group(1), {})  # noqa: S307 - our own literal
        if label["risk"] not in LEVELS:
            raise ValueError(f"{path}: unknown risk {label['risk']!r}")
        cases.append(
            {
                "case": path.stem,
                "app": "c_" + path.stem,
                "file": str(path.relative_to(REPO)),
                "risk": label["risk"],
                "rules": list(label.get("rules") or []),
                "why": label.get("why", ""),
            }
        )
    return cases


def build_project(dest: Path, cases: list[dict] | None = None) -> Path:
    cases = cases if cases is not None else load_cases()
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    (dest / "manage.py").write_text(MANAGE)
    (dest / "corpus_settings.py").write_text(SETTINGS.format(apps=["base"] + [c["app"] for c in cases]))

    def app(label: str, migrations: dict[str, str]) -> None:
        pkg = dest / label / "migrations"
        pkg.mkdir(parents=True)
        (dest / label / "__init__.py").write_text("")
        (pkg / "__init__.py").write_text("")
        for name, text in migrations.items():
            (pkg / f"{name}.py").write_text(text)

    app("base", {"0001_initial": BASE_MODELS.format(operations="_models(with_legacy=False)")})
    state_only = BASE_MODELS.format(
        operations="[migrations.SeparateDatabaseAndState(state_operations=_models(with_legacy=True))]"
    )
    for case in cases:
        source = (REPO / case["file"]).read_text()
        source += f'\n\nMigration.dependencies = [("{case["app"]}", "0001_base")]\n'
        app(case["app"], {"0001_base": state_only, "0002_case": source})
    return dest


def _connect(env: dict):
    return psycopg.connect(
        host=env["PGHOST"], port=env["PGPORT"], user=env["PGUSER"], password=env["PGPASSWORD"],
        dbname=env["PGDATABASE"], autocommit=True,
    )


def child_env(env: dict, **extra) -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DJANGO_"))}
    out.update(env)
    out.update(DJANGO_SETTINGS_MODULE="corpus_settings", PYTHONIOENCODING="utf-8", **extra)
    return out


def prepare_database(project: Path, env: dict, python: str = sys.executable, cases: list[dict] | None = None) -> None:
    cases = cases if cases is not None else load_cases()
    subprocess.run(
        [python, "manage.py", "migrate", "base", "-v", "0"], cwd=project, env=child_env(env), check=True,
        capture_output=True, timeout=300,
    )
    with _connect(env) as conn:
        conn.execute("DROP INDEX corpus_big_code_idx")  # rebuilt after the bulk load: faster
        conn.execute(
            "INSERT INTO corpus_big (name, code, qty, note, email, created) "
            "SELECT 'n' || g, 'c' || (g %% 1000), g, NULL, NULL, now() FROM generate_series(1, %s) g",
            [BIG_ROWS],
        )
        conn.execute('CREATE INDEX corpus_big_code_idx ON corpus_big (code)')
        conn.execute(
            "INSERT INTO corpus_mid (name, code, qty, note, email, created) "
            "SELECT 'n' || g, 'c' || (g %% 1000), g, 'x', 'e' || g, now() FROM generate_series(1, %s) g",
            [MID_ROWS],
        )
        conn.execute("ANALYZE corpus_big; ANALYZE corpus_mid; ANALYZE corpus_empty")
        for case in cases:
            conn.execute(f'CREATE TABLE "{case["app"]}_legacy" (id bigserial PRIMARY KEY, title varchar(50) NULL)')
        now = datetime.datetime.now(datetime.UTC)
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO django_migrations (app, name, applied) VALUES (%s, '0001_base', %s)",
                [(case["app"], now) for case in cases],
            )


def run_helper(project: Path, env: dict, python: str = sys.executable) -> dict:
    """The helper's "plan" reply, run the way _django_runner.invoke_helper runs it."""
    request = {
        "action": "plan", "database": "default", "settings": "corpus_settings", "check_missing": False,
        # the data rules (will-fail-*) need the pre-checks; bounded so that a slow one cannot stall the corpus
        "prechecks": True, "precheck_timeout_ms": 20_000,
    }
    proc = subprocess.run(
        [python, str(HELPER)], cwd=project, env=child_env(env), input=json.dumps(request),
        capture_output=True, text=True, timeout=600, check=False,
    )
    try:
        reply = json.loads(proc.stdout)
    except ValueError as exc:
        raise RuntimeError(f"helper did not answer JSON (rc={proc.returncode}): {proc.stderr[-3000:]}") from exc
    if not reply.get("ok"):
        raise RuntimeError(f"helper failed: {reply}")
    return reply


def plan(project: Path, env: dict, python: str = sys.executable) -> dict[str, dict]:
    """{case: {"risk", "rules": {rule: risk}}} graded by our planner."""
    collections = REPO / ".build" / "collections"
    link = collections / "ansible_collections" / "safedeploy" / "django"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO)
    if str(collections) not in sys.path:
        sys.path.insert(0, str(collections))
    from ansible_collections.safedeploy.django.plugins.module_utils import _rules

    reply = run_helper(project, env, python)
    result = _rules.assess_plan(reply, "high", [], datetime.date.today())
    graded = {}
    for migration in result["plan"]:
        if migration["name"] != "0002_case":
            continue
        case = migration["app_label"][2:]
        rules: dict[str, str] = {}
        for item in migration["verdicts"]:
            if RISK_RANK[item["risk"]] >= RISK_RANK.get(rules.get(item["rule"], "none"), 0):
                rules[item["rule"]] = item["risk"]
        graded[case] = {"risk": migration["risk"], "rules": rules}
    return graded


RISK_RANK = {name: rank for rank, name in enumerate(LEVELS)}


def score(cases: list[dict], graded: dict[str, dict]) -> dict:
    """Accuracy figures of ``graded`` ({case: {"risk", "rules"?}}) against the labels."""
    confusion = {want: dict.fromkeys(LEVELS, 0) for want in LEVELS}
    misses, rule_misses = [], []
    exact = high_below = predicted_high = true_high = hit_high = 0
    for case in cases:
        got = graded.get(case["case"], {}).get("risk", "none")
        want = case["risk"]
        confusion[want][got] += 1
        exact += got == want
        if want == "high":
            true_high += 1
            hit_high += got == "high"
            high_below += got != "high"
        predicted_high += got == "high"
        if got != want:
            misses.append({"case": case["case"], "expected": want, "got": got, "why": case["why"]})
        got_rules = graded.get(case["case"], {}).get("rules")
        if got_rules is not None:
            missing = sorted(set(case["rules"]) - set(got_rules))
            if missing:
                rule_misses.append({"case": case["case"], "missing_rules": missing, "got": sorted(got_rules)})
    total = len(cases)
    return {
        "cases": total,
        "high_graded_below_high": high_below,
        "exact_accuracy": exact / total if total else 0.0,
        "precision_high": hit_high / predicted_high if predicted_high else 0.0,
        "recall_high": hit_high / true_high if true_high else 0.0,
        "predicted_high": predicted_high,
        "true_high": true_high,
        "confusion": confusion,
        "misses": misses,
        "rule_misses": rule_misses,
    }


def format_score(title: str, figures: dict) -> str:
    lines = [
        f"== {title}: {figures['cases']} cases",
        f"high-risk cases graded below high : {figures['high_graded_below_high']} (goal 0)",
        f"exact-risk accuracy               : {figures['exact_accuracy']:.1%} (goal >= 90%)",
        f"precision on high                 : {figures['precision_high']:.1%} "
        f"({figures['predicted_high']} graded high; goal >= 95%)",
        f"recall on high                    : {figures['recall_high']:.1%} ({figures['true_high']} labelled high)",
        "confusion (rows: expected, columns: graded)",
        "          " + "".join(f"{level:>8}" for level in LEVELS),
    ]
    for want in LEVELS:
        lines.append(f"{want:>10}" + "".join(f"{figures['confusion'][want][got]:>8}" for got in LEVELS))
    lines.append(f"misses ({len(figures['misses'])}):")
    for miss in figures["misses"]:
        lines.append(f"  {miss['case']}: expected {miss['expected']}, got {miss['got']}")
    if figures.get("rule_misses"):
        lines.append(f"expected rules not reported ({len(figures['rule_misses'])}):")
        for miss in figures["rule_misses"]:
            lines.append(f"  {miss['case']}: missing {', '.join(miss['missing_rules'])} (got {', '.join(miss['got'])})")
    return "\n".join(lines)
