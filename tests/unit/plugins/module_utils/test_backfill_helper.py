"""_backfill_helper: how the module runs it (the files it ships), and what it imports at the top."""

from __future__ import annotations

import os
import stat
import subprocess

from ansible_collections.safedeploy.django.plugins.module_utils import _backfill_helper, _django_runner


def test_run_ships_three_files_and_runs_our_entry_point(monkeypatch):
    seen = {}

    def fake_invoke(params, action, payload, *, which, popen):
        class Recorder:
            def __init__(self, argv, **kwargs):
                entry = argv[-1]
                seen["argv"] = argv
                seen["files"] = sorted(os.listdir(os.path.dirname(entry)))
                seen["mode"] = stat.S_IMODE(os.stat(entry).st_mode)
                seen["dir_mode"] = stat.S_IMODE(os.stat(os.path.dirname(entry)).st_mode)
                with open(entry, encoding="utf-8") as handle:
                    seen["helper_has_main"] = "def action_backfill" in handle.read()

        monkeypatch.setattr(subprocess, "Popen", Recorder)
        popen(["/app/python", "/tmp/the_runner_script.py"], cwd="/srv/app")
        seen["action"] = action
        return {"ok": True}

    monkeypatch.setattr(_django_runner, "invoke_helper", fake_invoke)

    assert _backfill_helper.run({}, {"name": "x"}, which=lambda name: None) == {"ok": True}
    assert seen["action"] == "backfill"
    assert seen["argv"][:2] == ["/app/python", "-B"] and seen["argv"][2].endswith("/_backfill_helper.py")
    assert seen["files"] == ["_backfill.py", "_backfill_helper.py", "_django_helper.py"]
    assert seen["mode"] == 0o600 and seen["dir_mode"] == 0o700 and seen["helper_has_main"]
    assert not os.path.exists(os.path.dirname(seen["argv"][2]))  # removed afterwards


def test_the_helper_imports_nothing_but_the_stdlib_at_the_top():
    """It runs in the application's interpreter: no ansible import outside the fallback and run()."""
    with open(_backfill_helper.__file__, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    top = [line for line in lines if line.startswith(("import ", "from "))]
    assert all("ansible" not in line for line in top), top
    assert not any(line.startswith("import django") or line.startswith("from django") for line in lines)
