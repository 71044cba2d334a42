"""playbooks/plan.yml as a CI job runs it: no fleet, a checkout planned on localhost, reports on disk.

ansible-playbook -i localhost, -c local safedeploy.django.plan -e release_project_path=... against a
throwaway PostgreSQL database, with the test venv's python as the application's interpreter.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RISKY = Path(__file__).resolve().parent / "projects" / "riskyproj"
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = str(BIN / "ansible-playbook")
PYTHON = sys.executable  # the application's interpreter (it has Django and psycopg)
REPORTS = ("migration-plan.md", "migration-plan.json", "migration-plan.sarif")


def clean_env(**extra) -> dict:
    """The controller's environment without any database variable: the playbook must pass them itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DJANGO_", "RISKYPROJ_", "ANSIBLE_"))}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
        ANSIBLE_LOCALHOST_WARNING="False",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        # An explicit localhost gets interpreter discovery, which can find a broken pyenv shim here.
        ANSIBLE_PYTHON_INTERPRETER=PYTHON,
    )
    env.update(extra)
    return env


def sql(db_env: dict, query: str):
    with psycopg.connect(host=db_env["PGHOST"], port=db_env["PGPORT"], user=db_env["PGUSER"],
                         password=db_env["PGPASSWORD"], dbname=db_env["PGDATABASE"], autocommit=True) as conn:
        return conn.execute(query).fetchall()


def applied(db_env: dict) -> list[tuple[str, str]]:
    if not sql(db_env, "SELECT to_regclass('django_migrations') IS NOT NULL")[0][0]:
        return []
    return sql(db_env, "SELECT app, name FROM django_migrations ORDER BY id")


def run_plan(db_env: dict, tmp_path: Path, report_dir: Path, **extra_vars) -> subprocess.CompletedProcess:
    """The CI job's command; the database variables travel in a vars file, as a CI secret would."""
    variables = {
        "release_project_path": str(RISKY),
        "release_python": PYTHON,
        "release_environment": dict(db_env),
        "release_report_dir": str(report_dir),
        **extra_vars,
    }
    vars_file = tmp_path / f"vars-{report_dir.name}.json"
    vars_file.write_text(json.dumps(variables))
    vars_file.chmod(0o600)
    argv = [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local", "-v", "safedeploy.django.plan",
            "-e", f"@{vars_file}"]
    proc = subprocess.run(argv, env=clean_env(), capture_output=True, check=False, text=True, timeout=300,
                          cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert db_env["PGPASSWORD"] not in output, "the database password leaked into Ansible's output"
    return proc


def read_reports(report_dir: Path, secret: str) -> dict[str, str]:
    texts = {}
    for name in REPORTS:
        path = report_dir / name
        assert path.is_file(), f"{name} was not written: {sorted(p.name for p in report_dir.iterdir())}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, name
        texts[name] = path.read_text()
        assert secret not in texts[name], f"the database password leaked into {name}"
    return texts


def test_a_plan_that_passes_the_gate_writes_the_reports_and_exits_0(pg_database, tmp_path):
    report_dir = tmp_path / "out" / "reports"  # created by the playbook, parents included
    proc = run_plan(pg_database, tmp_path, report_dir, release_max_risk="high")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    reports = read_reports(report_dir, pg_database["PGPASSWORD"])

    assert "gate (max_risk high): **passed**" in reports["migration-plan.md"]
    result = json.loads(reports["migration-plan.json"])
    assert "catalog.0001_initial" in result["pending"] and result["gate"]["blocked"] is False
    assert result["target"]["database"] == pg_database["PGDATABASE"]
    assert not {"report_markdown", "report_sarif", "changed", "invocation"} & set(result)
    assert not [key for key in result if key.startswith("_")]

    sarif = json.loads(reports["migration-plan.sarif"])
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    assert run["tool"]["driver"]["name"] == "safedeploy.django"
    assert run["invocations"][0]["properties"]["gate_blocked"] is False
    base = run["originalUriBaseIds"]["PROJECTROOT"]["uri"]
    assert urllib.request.url2pathname(urllib.parse.urlparse(base).path) == str(RISKY) + "/"
    results = run["results"]
    assert results, "riskyproj's plan has verdicts above none"
    in_project = set()
    for item in results:
        assert not item["properties"]["blocked"]
        assert item["locations"], item  # every migration, the project's and Django's own, has its file
        location = item["locations"][0]["physicalLocation"]
        uri = location["artifactLocation"]["uri"]
        if location["artifactLocation"].get("uriBaseId") == "PROJECTROOT":
            path = RISKY / urllib.parse.unquote(uri)
            in_project.add(path.relative_to(RISKY).as_posix())
        else:  # a migration of an installed app (django.contrib.*): an absolute file URI
            path = Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))
        assert path.is_file(), uri
        assert 1 <= location["region"]["startLine"] <= len(path.read_text().splitlines()), item
    assert "catalog/migrations/0007_fill_titles.py" in in_project
    # RunPython(fill_titles) is on line 13 of 0007, the only operation
    fill = next(r for r in results if r["properties"]["migration"] == "catalog.0007_fill_titles"
                and r["ruleId"] == "run-python")
    assert fill["locations"][0]["physicalLocation"]["region"]["startLine"] == 13

    # nothing was applied: there is not even a django_migrations table
    assert applied(pg_database) == []


def test_a_blocked_plan_writes_the_reports_then_fails(pg_database, tmp_path):
    # catalog up to 0002 applied: the next migrations change existing tables, some of them "high"
    env = dict(clean_env(), **pg_database)
    subprocess.run([PYTHON, "manage.py", "migrate", "catalog", "0002", "-v", "0"], cwd=RISKY, env=env, check=True,
                   capture_output=True, timeout=120)
    before = applied(pg_database)
    assert ("catalog", "0002_product_note") in before

    report_dir = tmp_path / "blocked"
    proc = run_plan(pg_database, tmp_path, report_dir)  # default release_max_risk: medium
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    assert "Fail on missing migrations or a blocked gate" in output
    assert "exceeds release_max_risk=medium" in output
    assert "catalog.0003_product_stock" in output

    reports = read_reports(report_dir, pg_database["PGPASSWORD"])
    assert "**BLOCKED**" in reports["migration-plan.md"]
    assert json.loads(reports["migration-plan.json"])["gate"]["blocked"] is True
    sarif = json.loads(reports["migration-plan.sarif"])
    assert sarif["runs"][0]["invocations"][0]["properties"]["gate_blocked"] is True
    blocking = [r for r in sarif["runs"][0]["results"] if r["properties"]["blocked"]]
    assert blocking and all(r["level"] == "error" for r in blocking)
    assert "catalog.0003_product_stock" in {r["properties"]["migration"] for r in blocking}
    assert applied(pg_database) == before

    # release_plan_fail_on_block=false: the same reports, exit 0
    lenient_dir = tmp_path / "lenient"
    lenient = run_plan(pg_database, tmp_path, lenient_dir, release_plan_fail_on_block=False)
    assert lenient.returncode == 0, lenient.stdout[-4000:]
    assert "**BLOCKED**" in read_reports(lenient_dir, pg_database["PGPASSWORD"])["migration-plan.md"]
    assert applied(pg_database) == before


def test_missing_migrations_fail_after_the_reports(pg_database, tmp_path):
    report_dir = tmp_path / "missing"
    proc = run_plan(pg_database, tmp_path, report_dir, release_max_risk="high", release_plan_fail_on_block=False,
                    release_environment=dict(pg_database, RISKYPROJ_PENDING_MODEL_CHANGE="1"))
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert "Models have changes without a migration (catalog: 0013_product_extra)" in proc.stdout
    assert "exceeds release_max_risk" not in proc.stdout
    reports = read_reports(report_dir, pg_database["PGPASSWORD"])
    assert "catalog: 0013_product_extra" in reports["migration-plan.md"]
    assert json.loads(reports["migration-plan.json"])["missing_migrations"] == {"catalog": ["0013_product_extra"]}
    assert applied(pg_database) == []


def test_a_checkout_path_must_be_absolute(pg_database, tmp_path):
    proc = run_plan(pg_database, tmp_path, tmp_path / "reports", release_project_path="riskyproj")
    assert proc.returncode != 0
    assert "release_project_path (an absolute path" in proc.stdout
    assert not (tmp_path / "reports").exists()
