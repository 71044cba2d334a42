"""Write docs/rules.md from the rule registry in plugins/module_utils/_rules.py.

    python devtools/gen_rules_doc.py           # rewrite docs/rules.md
    python devtools/gen_rules_doc.py --check   # exit 1 if docs/rules.md is out of date
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RULES_PY = REPO / "plugins" / "module_utils" / "_rules.py"
TARGET = REPO / "docs" / "rules.md"


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
    text = load_rules().rules_markdown()
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
