"""Test/demo callback: one JSON line per task result, for assertions on what ran where.

Enabled by devtools.playbook (ANSIBLE_CALLBACKS_ENABLED=results_jsonl); writes to the
file named by SAFEDEPLOY_RESULTS. Results go through Ansible's own no_log censoring
(the callback sees what the default output would show), never raw arguments.
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: results_jsonl
type: aggregate
short_description: write each task result as a JSON line (safedeploy test tooling)
description: Writes one JSON object per task result to the file in SAFEDEPLOY_RESULTS.
requirements: [enable in ansible.cfg or ANSIBLE_CALLBACKS_ENABLED]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "results_jsonl"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._path = os.environ.get("SAFEDEPLOY_RESULTS")

    def _write(self, result, status):
        if not self._path:
            return
        task = result._task
        data = self._dump_results(result._result, indent=None)  # censored as the default output is
        # the task's delegate_to is templated by the time results arrive
        delegated = result._result.get("_ansible_delegated_vars") or {}
        delegated_to = delegated.get("ansible_delegated_host") or task.delegate_to or None
        line = {
            "play": task.play.get_name() if task.play else None,
            "task": task.get_name(),
            "action": task.action,
            "host": result._host.get_name(),
            "delegated_to": delegated_to,
            "status": status,
            "changed": bool(result._result.get("changed", False)),
            "result": json.loads(data),
        }
        with open(self._path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, default=str) + "\n")

    def v2_runner_on_ok(self, result):
        self._write(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._write(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result):
        self._write(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._write(result, "unreachable")
