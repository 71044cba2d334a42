"""Write docs/rules.md from the rule registry in plugins/module_utils/_rules.py.

Each rule's example is the migration that tests it: the corpus case (tests/corpus/cases/)
labelled with that rule alone when there is one, or for the data and rollback rules the
test project migration listed in EXTRA_EXAMPLES.

    python devtools/gen_rules_doc.py           # rewrite docs/rules.md
    python devtools/gen_rules_doc.py --check   # exit 1 if docs/rules.md is out of date
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RULES_PY = REPO / "plugins" / "module_utils" / "_rules.py"
TARGET = REPO / "docs" / "rules.md"
CASES = REPO / "tests" / "corpus" / "cases"
# Rules that the forward corpus cannot show: (file, what the test does with it).
_GRAPH = "tests/integration/projects/graphproj/library/migrations/"
EXTRA_EXAMPLES: dict[str, tuple[str, str]] = {
    "unapply-irreversible": (_GRAPH + "0004_upper_titles.py", "unapplying it stops (test_plan_graph.py)"),
    "unapply-drops-data": (_GRAPH + "0005_book_pages.py", "unapplying it drops library_book.pages"),
    "unapply-reversible": (_GRAPH + "0003_fill_subtitles.py", "RunPython with reverse_code"),
}


def operations_source(path: Path) -> str | None:
    """The ``operations = [...]`` (and ``atomic``) lines of the Migration class in ``path``."""
    text = path.read_text(encoding="utf-8")
    for node in ast.parse(text).body:
        if isinstance(node, ast.ClassDef) and node.name == "Migration":
            parts = [
                textwrap.dedent(" " * item.col_offset + (ast.get_source_segment(text, item) or ""))
                for item in node.body
                if isinstance(item, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id in ("operations", "atomic") for t in item.targets)
            ]
            return "\n".join(p for p in parts if p) or None
    return None


def corpus_examples(rule_ids) -> dict[str, str]:
    sys.path.insert(0, str(REPO))
    from tests.corpus import corpus

    examples = {}
    cases = corpus.load_cases()
    for rule_id in rule_ids:
        matching = [c for c in cases if rule_id in c["rules"]]
        if not matching:
            continue
        case = min(matching, key=lambda c: (len(c["rules"]), c["case"]))
        body = operations_source(CASES / f"{case['case']}.py")
        if body:
            header = f"# tests/corpus/cases/{case['case']}.py - graded {case['risk']}: {case['why']}"
            examples[rule_id] = header + "\n" + body
    for rule_id, (relative, note) in EXTRA_EXAMPLES.items():
        body = operations_source(REPO / relative)
        if body and rule_id in rule_ids:
            examples[rule_id] = f"# {relative} - {note}\n{body}"
    return examples


def load_rules():
    # _rules.py is pure stdlib: load it by path, no collection import path needed.
    spec = importlib.util.spec_from_file_location("safedeploy_rules", RULES_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building the class
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/rules.md is not up to date")
    args = parser.parse_args(argv)
    rules = load_rules()
    text = rules.rules_markdown(corpus_examples(list(rules.RULES)))
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(REPO)} is out of date: run python devtools/gen_rules_doc.py", file=sys.stderr)
            return 1
        return 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
