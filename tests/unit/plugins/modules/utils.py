"""Helpers for unit tests of Ansible modules (shared by the collection's module tests).

The classic pattern: ``set_module_args`` feeds arguments to ``AnsibleModule``, and
``exit_json`` / ``fail_json`` are patched to raise, so a test can catch the result.

ansible-core 2.19 no longer reads ``basic._ANSIBLE_ARGS`` as plain JSON bytes the way
older releases did; it ships ``ansible.module_utils.testing.patch_module_args`` (a context
manager) instead. ``set_module_args`` uses it when present and falls back otherwise.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any
from unittest import mock

from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes

try:  # ansible-core >= 2.19
    from ansible.module_utils.testing import patch_module_args as _patch_module_args
except ImportError:  # pragma: no cover - older ansible-core
    _patch_module_args = None


@contextlib.contextmanager
def set_module_args(args: dict[str, Any] | None = None) -> Iterator[None]:
    """Context manager: AnsibleModule instances created inside see ``args``."""
    args = dict(args or {})
    args.setdefault("_ansible_remote_tmp", "/tmp")
    args.setdefault("_ansible_keep_remote_files", False)
    if _patch_module_args is not None:
        with _patch_module_args(args):
            yield
        return
    payload = to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    with mock.patch.object(basic, "_ANSIBLE_ARGS", payload):
        yield


class AnsibleExitJson(Exception):
    """Raised instead of exiting when a module calls exit_json; ``.result`` holds its kwargs."""

    def __init__(self, result: dict[str, Any]):
        super().__init__(result)
        self.result = result


class AnsibleFailJson(Exception):
    """Raised instead of exiting when a module calls fail_json; ``.result`` holds its kwargs."""

    def __init__(self, result: dict[str, Any]):
        super().__init__(result)
        self.result = result


def exit_json(self, **kwargs):
    kwargs.setdefault("changed", False)
    raise AnsibleExitJson(kwargs)


def fail_json(self, msg, **kwargs):
    kwargs["failed"] = True
    kwargs["msg"] = msg
    raise AnsibleFailJson(kwargs)


@contextlib.contextmanager
def patched_exit_fail() -> Iterator[None]:
    """Patch AnsibleModule.exit_json/fail_json to raise AnsibleExitJson/AnsibleFailJson."""
    with mock.patch.multiple(basic.AnsibleModule, exit_json=exit_json, fail_json=fail_json):
        yield


def run_module(main, args: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Run a module's ``main`` with ``args``; return (failed, result)."""
    with set_module_args(args), patched_exit_fail():
        try:
            main()
        except AnsibleExitJson as exc:
            return False, exc.result
        except AnsibleFailJson as exc:
            return True, exc.result
    raise AssertionError("module returned without calling exit_json or fail_json")
