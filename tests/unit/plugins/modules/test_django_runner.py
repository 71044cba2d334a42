"""_django_runner: parameter resolution and error mapping (the child process is mocked here only)."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils import _django_helper, _django_runner

SECRET = "s3cr3t-Value"


@pytest.fixture()
def project(tmp_path):
    (tmp_path / "manage.py").write_text(
        'import os\nos.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")\n'
    )
    return tmp_path


@pytest.fixture()
def python(tmp_path):
    exe = tmp_path / "python"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return str(exe)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    monkeypatch.setenv("PGPASSWORD", SECRET)


def params(project, python, **extra):
    base = {"project_path": str(project), "python": python, "virtualenv": None, "settings": None,
            "pythonpath": None, "database": "default", "timeout": 30, "app_environment": {}}
    base.update(extra)
    return base


class FakeProcess:
    def __init__(self, stdout=b"", stderr=b"", returncode=0, timeout=False):
        self.stdout, self.stderr, self.returncode, self.timeout = stdout, stderr, returncode, timeout
        self.pid = 999999
        self.killed = False
        self.calls = 0

    def communicate(self, data=None, timeout=None):
        self.calls += 1
        if self.timeout and self.calls == 1:
            raise subprocess.TimeoutExpired("python", timeout)
        return self.stdout, self.stderr

    def kill(self):
        self.killed = True


def fake_popen(process, seen=None):
    def popen(argv, **kwargs):
        if seen is not None:
            seen.update(argv=argv, **kwargs)
            script = argv[1]
            seen["mode"] = stat.S_IMODE(os.stat(script).st_mode)
            with open(script, encoding="utf-8") as handle:
                seen["source"] = handle.read()
        return process
    return popen


def invoke(project, python, process, seen=None, **extra):
    return _django_runner.invoke_helper(
        params(project, python, **extra), "plan", {"check_missing": True}, which=lambda name: None,
        popen=fake_popen(process, seen),
    )


def test_runs_the_helper_source_with_json_on_stdin(project, python):
    seen = {}
    reply = invoke(project, python, FakeProcess(stdout=json.dumps({"ok": True, "plan": []}).encode()), seen,
                   app_environment={"PGHOST": "db", "PGPASSWORD": "other"})
    assert reply["ok"] is True
    assert seen["argv"][0] == python and len(seen["argv"]) == 2  # nothing else on the command line
    assert seen["cwd"] == str(project)
    assert seen["mode"] == 0o600
    assert "def action_plan" in seen["source"]
    assert seen["env"]["DJANGO_SETTINGS_MODULE"] == "proj.settings"  # parsed from manage.py
    assert seen["env"]["PGHOST"] == "db" and seen["env"]["PGPASSWORD"] == "other"
    assert not os.path.exists(seen["argv"][1])  # temp file removed


@pytest.mark.parametrize(
    "process,kind,fragment",
    [
        (FakeProcess(stdout=b"", stderr=b"  File x\nSyntaxError: invalid syntax\n", returncode=1), "no_reply",
         "SyntaxError"),
        (FakeProcess(stdout=b"Traceback ... not json", stderr=("boom " + SECRET).encode(), returncode=1),
         "no_reply", "exited with rc=1 without answering"),
        (FakeProcess(timeout=True, stderr=b"slow"), "timeout", "did not finish within 30s"),
    ],
)
def test_process_failures_become_clear_messages(project, python, process, kind, fragment, monkeypatch):
    killed = []
    monkeypatch.setattr(os, "killpg", lambda pid, sig: killed.append(pid))
    with pytest.raises(_django_runner.HelperFailure) as info:
        invoke(project, python, process)
    assert info.value.kind == kind
    assert fragment in info.value.message
    assert SECRET not in json.dumps(info.value.details) and SECRET not in info.value.message
    if kind == "timeout":
        assert killed == [process.pid]


def test_popen_oserror(project, python):
    def popen(argv, **kwargs):
        raise PermissionError(13, "Permission denied")

    with pytest.raises(_django_runner.HelperFailure) as info:
        _django_runner.invoke_helper(params(project, python), "plan", {}, which=lambda n: None, popen=popen)
    assert info.value.kind == "interpreter" and "Permission denied" in info.value.message


def test_reply_and_stderr_are_scrubbed(project, python):
    reply = invoke(project, python, FakeProcess(
        stdout=json.dumps({"ok": False, "error_kind": "db_auth", "message": f"bad {SECRET}"}).encode(),
        stderr=f"log {SECRET}".encode()))
    assert SECRET not in json.dumps(reply)
    assert reply["message"] == "bad ********" and reply["stderr"] == "log ********"


@pytest.mark.parametrize(
    "kind,message,hint",
    [
        ("django_missing", "Django is not importable in /usr/bin/python3: No module named 'django'",
         "Point virtualenv or python"),
        ("settings_import", "cannot import settings module 'x.settings'", "Set settings"),
        ("db_auth", "PostgreSQL at h:1 rejected the login", None),
        ("something_new", None, None),
    ],
)
def test_failure_from_reply(kind, message, hint):
    failure = _django_runner.failure_from_reply({"ok": False, "error_kind": kind, "message": message})
    assert failure.kind == kind
    assert failure.message.startswith(message or "the Django helper failed (something_new)")
    if hint:
        assert hint in failure.message


@pytest.mark.parametrize(
    "setup,fragment",
    [
        (lambda p, py: params(p / "nope", py), "does not exist or is not a directory"),
        (lambda p, py: (os.remove(p / "manage.py"), params(p, py))[1], "has no manage.py"),
        (lambda p, py: params(p, str(p / "missing-python")), "does not exist"),
        (lambda p, py: params(p, str(p / "manage.py")), "is not an executable file"),
        (lambda p, py: params(p, "no-such-python-xyz"), "is not on PATH"),
        (lambda p, py: params(p, None, virtualenv=str(p)), "has no bin/python"),
        (lambda p, py: ((p / "manage.py").write_text("print(1)\n"), params(p, py))[1], "set settings"),
    ],
)
def test_bad_parameters(project, python, setup, fragment):
    with pytest.raises(_django_runner.HelperFailure) as info:
        _django_runner.invoke_helper(
            setup(project, python), "plan", {}, which=lambda n: None, popen=fake_popen(FakeProcess(stdout=b"{}"))
        )
    assert fragment in info.value.message


def test_settings_precedence(project, monkeypatch):
    p = params(project, None)
    assert _django_runner.resolve_settings(p) == "proj.settings"
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "env.settings")
    assert _django_runner.resolve_settings(p) == "env.settings"
    p["app_environment"] = {"DJANGO_SETTINGS_MODULE": "appenv.settings"}
    assert _django_runner.resolve_settings(p) == "appenv.settings"
    p["settings"] = "param.settings"
    assert _django_runner.resolve_settings(p) == "param.settings"


def test_secret_values_and_scrub():
    secrets = _django_runner.secret_values(
        {"PGPASSWORD": "pw1", "PGHOST": "db", "DJANGO_SECRET_KEY": "key1", "API_TOKEN": "tok1", "DEBUG_KEY": "on"},
        environ={"PGPASSWORD": "pw0", "HOME": "/root"},
    )
    assert sorted(secrets) == ["key1", "pw0", "pw1", "tok1"]
    scrubbed = _django_runner.scrub({"a": ["x pw1 y", 3], "b": "pw0"}, secrets)
    assert scrubbed == {"a": ["x ******** y", 3], "b": "********"}


def test_lock_key_is_a_stable_signed_64_bit_int():
    key = _django_runner.lock_key("shop", "safedeploy.migrate")
    assert key == _django_helper.lock_key("shop", "safedeploy.migrate")
    assert -(2**63) <= key < 2**63
    assert key != _django_runner.lock_key("other", "safedeploy.migrate")
    import hashlib

    digest = hashlib.sha256(b"shopsafedeploy.migrate").digest()
    assert key == int.from_bytes(digest[:8], "big", signed=True)


def test_helper_scrub_handles_json_escaping():
    secret = 'pa"ss\\word'
    text = json.dumps({"message": f"x {secret} y"})
    assert "pa" not in _django_helper.scrub(text, [secret]).replace("protocol", "")


def test_flag_values_of_secret_looking_names_are_not_masked():
    """HOST_KEY_CHECKING=0 must not turn every 0 of the result (127.0.0.1) into ********."""
    from ansible_collections.safedeploy.django.plugins.module_utils._django_runner import scrub, secret_values

    secrets = secret_values({"PGPASSWORD": "s3cret-pw"}, {"ANSIBLE_HOST_KEY_CHECKING": "0", "USE_KEYRING": "true"})
    assert secrets == ["s3cret-pw"]
    assert scrub({"host": "127.0.0.1", "dsn": "x:s3cret-pw@h"}, secrets) == {"host": "127.0.0.1", "dsn": "x:********@h"}
