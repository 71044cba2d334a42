"""Run one module task through real ``ansible-playbook`` and return its registered result.

Shared by the modules' integration tests: the result is saved with ``copy``
(ansible-core ships no JSON stdout callback), and the process is returned too,
so a test can also search the whole output (``-vvv`` included) for secrets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LIBPQ_VARIABLES = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGPASSFILE")


def run_task(tmp_path: Path, module: str, args: dict, *, check: bool = False, verbosity: int = 0,
             task_env: dict | None = None, env: dict | None = None, clear_libpq: bool = False,
             timeout: int = 300) -> tuple[dict, subprocess.CompletedProcess]:
    """``task_env`` becomes the task's ``environment:``; ``env`` is added to ansible's own
    environment; ``clear_libpq`` removes the caller's PG* variables first."""
    out = tmp_path / f"result-{len(list(tmp_path.glob('result-*')))}.json"
    playbook = tmp_path / "play.yml"
    task = {"name": "module under test", module: args, "register": "result", "ignore_errors": True}
    if task_env:
        task["environment"] = task_env
    play = [{
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [
            task,
            {"name": "save result", "ansible.builtin.copy": {"content": "{{ result | to_json }}", "dest": str(out)},
             "check_mode": False},
        ],
    }]
    playbook.write_text(json.dumps(play))
    argv = [str(BIN / "ansible-playbook"), str(playbook)] + (["--check"] if check else [])
    if verbosity:
        argv.append("-" + "v" * verbosity)
    run_env = dict(os.environ)
    if clear_libpq:
        for key in LIBPQ_VARIABLES:
            run_env.pop(key, None)
    run_env.update(ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
                   ANSIBLE_DEPRECATION_WARNINGS="0")
    run_env.update(env or {})
    proc = subprocess.run(argv, capture_output=True, check=False, text=True, env=run_env, cwd=tmp_path,
                          timeout=timeout)
    assert out.exists(), f"playbook did not finish:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text()), proc
