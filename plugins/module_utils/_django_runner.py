# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run ``_django_helper`` in the application's interpreter and map its errors.

The module side never imports the application's Django: it writes the helper's
source to a 0600 temp file, runs ``[python, file]`` with cwd = project_path,
sends a JSON request on stdin and reads the JSON reply from stdout. Secrets
travel only in the child's environment; every text that comes back is scrubbed
of them before it can reach a message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile

from ansible_collections.safedeploy.django.plugins.module_utils import _django_helper
from ansible_collections.safedeploy.django.plugins.module_utils._secrets import scrub

COMMON_ARGUMENT_SPEC = dict(
    project_path=dict(type="path", required=True, aliases=["app_path", "chdir"]),
    virtualenv=dict(type="path"),
    python=dict(type="path"),
    settings=dict(type="str"),
    pythonpath=dict(type="path", aliases=["python_path"]),
    database=dict(type="str", default="default"),
    timeout=dict(type="int", default=3600),
    app_environment=dict(type="dict", default={}),
)
COMMON_MUTUALLY_EXCLUSIVE = [("virtualenv", "python")]

# Environment variable names whose values are secrets (masked everywhere).
FLAG_WORDS = {"true", "false", "yes", "no", "on", "off", "none", "null"}
SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|URL|DSN", re.I)  # *_URL / *_DSN may embed a password
_SETTINGS_IN_MANAGE = re.compile(
    r"""os\.environ\.setdefault\(\s*["']DJANGO_SETTINGS_MODULE["']\s*,\s*["']([\w.]+)["']\s*\)"""
)
_STDERR_TAIL = 1500

# What the user should change, by the helper's error kind.
HINTS = {
    "django_missing": "Point virtualenv or python at the interpreter that has the application's requirements.",
    "settings_import": "Set settings to the dotted path of the settings module, or pythonpath to import it from.",
    "django_setup": "Fix the settings or the installed apps so that django.setup() succeeds in this environment.",
    "database_alias": "Set database to an alias that exists in settings.DATABASES.",
    "migration_graph": "Fix the migration files (missing dependency or import error) before deploying.",
    "inconsistent_history": "The django_migrations table does not match the migration files of this release.",
    "bad_setting": "Use a PostgreSQL duration such as 5s, 500ms or 0.",
}


class HelperFailure(Exception):
    """A helper run that failed; ``details`` are safe to return (already scrubbed)."""

    def __init__(self, kind: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details or {}


# -- secrets -------------------------------------------------------------------


def secret_values(app_environment: dict | None, environ: dict | None = None) -> list[str]:
    """Values that must never show: secret-looking variables of the app environment and our own."""
    environ = os.environ if environ is None else environ
    values = []
    for source in (environ, app_environment or {}):
        for name, value in source.items():
            if value and SECRET_NAME.search(str(name)) and str(name) != "PYTHONHASHSEED":
                values.append(str(value))
    return sorted({v for v in values if _maskable(v)}, key=len, reverse=True)


def _maskable(value: str) -> bool:
    """Flags such as HOST_KEY_CHECKING=0 are no secrets: masking "0" would garble every number
    in the result (an address, a system identifier), and corrupt values compared later."""
    short_number = value.isdigit() and len(value) <= 5
    return len(value) >= 3 and not short_number and value.lower() not in FLAG_WORDS


def register_secrets(module) -> list[str]:
    """Tell AnsibleModule to mask the secrets in everything it returns."""
    secrets = secret_values(module.params.get("app_environment"))
    module.no_log_values.update(secrets)
    return secrets


# -- resolving the parameters ----------------------------------------------------


def resolve_interpreter(params: dict, which) -> str:
    """The application's Python: virtualenv/bin/python, python, or python3 on PATH."""
    if params.get("virtualenv"):
        venv = params["virtualenv"]
        if not os.path.isdir(venv):
            raise HelperFailure("interpreter", f"virtualenv {venv} does not exist or is not a directory.")
        candidate = os.path.join(venv, "bin", "python")
        if not os.path.exists(candidate):
            raise HelperFailure(
                "interpreter",
                f"virtualenv {venv} has no bin/python: point virtualenv at a directory made by "
                "'python3 -m venv', or use python to name the interpreter.",
            )
    elif params.get("python"):
        candidate = params["python"]
        if os.sep not in candidate:
            found = which(candidate)
            if not found:
                raise HelperFailure(
                    "interpreter", f"interpreter '{candidate}' is not on PATH: give its full path in python."
                )
            candidate = found
    else:
        candidate = which("python3")
        if not candidate:
            raise HelperFailure(
                "interpreter", "no python3 on PATH: set virtualenv or python to the application's interpreter."
            )
    if not os.path.exists(candidate):
        raise HelperFailure("interpreter", f"interpreter {candidate} does not exist: fix python or virtualenv.")
    if os.path.isdir(candidate) or not os.access(candidate, os.X_OK):
        raise HelperFailure(
            "interpreter", f"interpreter {candidate} is not an executable file: fix python or virtualenv."
        )
    return candidate


def resolve_settings(params: dict, environ: dict | None = None) -> str:
    """settings > DJANGO_SETTINGS_MODULE in the environment > the default manage.py sets."""
    environ = os.environ if environ is None else environ
    if params.get("settings"):
        return params["settings"]
    app_env = params.get("app_environment") or {}
    if app_env.get("DJANGO_SETTINGS_MODULE"):
        return str(app_env["DJANGO_SETTINGS_MODULE"])
    if environ.get("DJANGO_SETTINGS_MODULE"):
        return environ["DJANGO_SETTINGS_MODULE"]
    manage = os.path.join(params["project_path"], "manage.py")
    try:
        with open(manage, encoding="utf-8") as handle:
            match = _SETTINGS_IN_MANAGE.search(handle.read())
    except OSError:
        match = None
    if match:
        return match.group(1)
    raise HelperFailure(
        "settings_missing",
        f"cannot tell which settings module to use: set settings (e.g. myproject.settings); {manage} does not "
        "call os.environ.setdefault('DJANGO_SETTINGS_MODULE', ...) and DJANGO_SETTINGS_MODULE is not set.",
    )


def check_project(params: dict) -> str:
    path = params["project_path"]
    if not os.path.isdir(path):
        raise HelperFailure(
            "project_path",
            f"project_path {path} does not exist or is not a directory: point it at the directory with manage.py.",
        )
    if not os.path.isfile(os.path.join(path, "manage.py")):
        raise HelperFailure(
            "project_path", f"project_path {path} has no manage.py: point it at the directory that contains manage.py."
        )
    return path


def child_environment(params: dict, settings: str, environ: dict | None = None) -> dict:
    env = dict(os.environ if environ is None else environ)
    for name, value in (params.get("app_environment") or {}).items():
        env[str(name)] = "" if value is None else str(value)
    env["DJANGO_SETTINGS_MODULE"] = settings
    if params.get("pythonpath"):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (params["pythonpath"], env.get("PYTHONPATH")) if p)
    env["PYTHONIOENCODING"] = "utf-8"
    env.pop("PYTHONSTARTUP", None)
    return env


def helper_source() -> str:
    loader = getattr(_django_helper, "__loader__", None)
    source = None
    if loader is not None and hasattr(loader, "get_source"):
        try:
            source = loader.get_source(_django_helper.__name__)
        except Exception:  # noqa: BLE001 - fall back to inspect
            source = None
    if not source:
        import inspect

        source = inspect.getsource(_django_helper)
    return source


# -- running ------------------------------------------------------------------------


def _tail(text: str, secrets: list[str]) -> str:
    return scrub((text or "")[-_STDERR_TAIL:].strip(), secrets)


def invoke_helper(params: dict, action: str, payload: dict, *, which, popen=subprocess.Popen) -> dict:
    """Run the helper; return its reply (``ok`` true or false) or raise HelperFailure."""
    project = check_project(params)
    python = resolve_interpreter(params, which)
    settings = resolve_settings(params)
    secrets = secret_values(params.get("app_environment"))
    env = child_environment(params, settings)
    env["SAFEDEPLOY_PARENT_PID"] = str(os.getpid())  # the helper dies with us (see _die_with_parent)
    request = dict(payload, action=action, database=params.get("database") or "default", settings=settings)
    timeout = params.get("timeout") or 3600

    fd, script = tempfile.mkstemp(prefix="safedeploy_django_helper_", suffix=".py")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(helper_source())
        os.chmod(script, 0o600)
        try:
            process = popen(
                [python, script],
                cwd=project,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise HelperFailure(
                "interpreter",
                f"cannot run interpreter {python}: {exc.strerror or exc}. Point python or virtualenv at a working "
                "Python 3 interpreter.",
            ) from exc
        try:
            stdout, stderr = process.communicate(json.dumps(request).encode("utf-8"), timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                process.kill()
            _stdout, stderr = process.communicate()
            raise HelperFailure(
                "timeout",
                f"the Django helper ({action}) did not finish within {timeout}s and was killed; raise timeout "
                "if the work is expected to take longer.",
                {"stderr": _tail((stderr or b"").decode("utf-8", "replace"), secrets)},
            ) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(script)

    out_text = (stdout or b"").decode("utf-8", "replace")
    err_text = (stderr or b"").decode("utf-8", "replace")
    try:
        reply = json.loads(out_text)
        if not isinstance(reply, dict):
            raise ValueError("reply is not an object")
    except ValueError:
        hint = "Point python or virtualenv at the application's Python 3 interpreter."
        if "SyntaxError" in err_text:
            hint = f"{python} cannot run the helper (a SyntaxError: is it Python 3.8+?). " + hint
        raise HelperFailure(
            "no_reply",
            f"interpreter {python} exited with rc={process.returncode} without answering the Django helper. {hint}",
            {"rc": process.returncode, "stderr": _tail(err_text, secrets)},
        ) from None
    reply = scrub(reply, secrets)
    reply.setdefault("stderr", _tail(err_text, secrets))
    return reply


def failure_from_reply(reply: dict) -> HelperFailure:
    kind = reply.get("error_kind") or "unknown"
    message = reply.get("message") or f"the Django helper failed ({kind})"
    hint = HINTS.get(kind)
    if hint and hint not in message:
        message = f"{message}. {hint}" if not message.endswith(".") else f"{message} {hint}"
    details = {k: v for k, v in reply.items() if k not in ("ok", "message", "protocol")}
    return HelperFailure(kind, message, details)


def run_helper(module, params: dict, action: str, payload: dict, passthrough: tuple = ()) -> dict:
    """Run the helper for a module; fail_json with a clear message unless the reply is ok.

    Replies whose ``error_kind`` is in ``passthrough`` are returned to the caller
    (e.g. ``migration_failed`` carries what was applied before the failure).
    """
    try:
        reply = invoke_helper(params, action, payload, which=module.get_bin_path)
        if not reply.get("ok") and reply.get("error_kind") not in passthrough:
            raise failure_from_reply(reply)
    except HelperFailure as failure:
        passed_on = ("stderr", "rc", "connection", "target", "lock", "traceback", "interpreter", "settings")
        details = {k: v for k, v in failure.details.items() if k in passed_on}
        module.fail_json(msg=failure.message, error_kind=failure.kind, **details)
    return reply


def lock_key(database: str, lock_name: str) -> int:
    return _django_helper.lock_key(database, lock_name)
