"""The planner on the labelled corpus (tests/corpus/), against a real PostgreSQL.

One Django project with one app per case on shared tables of real sizes (tests/corpus/corpus.py);
every case is planned in a single helper run. The figures themselves are printed by
benchmarks/accuracy/run.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ansible_collections.safedeploy.django.plugins.module_utils import _rules  # noqa: E402

from tests.corpus import corpus  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cases():
    return corpus.load_cases()


def test_corpus_is_big_enough_and_covers_every_rule(cases):
    assert len(cases) >= 60
    assert {case["risk"] for case in cases} == set(corpus.LEVELS)
    unknown = {rule for case in cases for rule in case["rules"]} - set(_rules.RULES)
    assert not unknown, f"labels name rules that do not exist: {sorted(unknown)}"
    covered = {rule for case in cases for rule in case["rules"]}
    # Rollback rules judge backwards plans: tests/integration/test_plan_graph.py has their cases.
    forward = {rule.id for rule in _rules.RULES.values() if rule.level != "rollback"}
    assert not forward - covered, f"rules without a corpus case: {sorted(forward - covered)}"


def test_planner_meets_the_accuracy_goals(pg_database, cases, tmp_path):
    project = corpus.build_project(tmp_path / "project", cases)
    corpus.prepare_database(project, pg_database, cases=cases)
    graded = corpus.plan(project, pg_database)
    assert sorted(graded) == sorted(case["case"] for case in cases), "every case is planned, once"
    figures = corpus.score(cases, graded)
    report = corpus.format_score("planner", figures)
    assert figures["high_graded_below_high"] == 0, report
    assert figures["exact_accuracy"] >= 0.90, report
    assert figures["precision_high"] >= 0.95, report
    assert not figures["rule_misses"], report
