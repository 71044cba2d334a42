# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP health polling: the logic behind safedeploy.django.http_healthcheck.

Private module. The evaluation of one response (`evaluate`) and the polling loop
(`poll`) are pure and take the clock, the sleep and the fetch function as
arguments, so they are unit tested without a network; `UrlFetcher` is the real
fetch built on ansible.module_utils.urls.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

BODY_EXCERPT = 512
_MISSING = object()


@dataclass
class Response:
    """One attempt: an HTTP status and body, or a transport error (status None)."""

    status: int | None = None
    body: str = ""
    error: str | None = None


@dataclass
class Expectations:
    status_codes: list[int] = field(default_factory=lambda: [200])
    body_contains: str | None = None
    body_regex: re.Pattern | None = None
    json_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Mapping) -> Expectations:
        regex = params.get("body_regex")
        compiled = None
        if regex:
            try:
                compiled = re.compile(regex, re.MULTILINE)
            except re.error as exc:
                raise ValueError(f"body_regex {regex!r} is not a valid regular expression: {exc}") from exc
        return cls(
            status_codes=list(params.get("status_code") or [200]),
            body_contains=params.get("body_contains"),
            body_regex=compiled,
            json_fields=dict(params.get("json") or {}),
        )


# -- evaluating one response -----------------------------------------------------------------

def lookup(data: Any, path: str) -> Any:
    """Value at a dotted path (``a.b.0.c``; digits index lists); _MISSING when absent.

    A key that itself contains dots is found too: at each level the longest key
    present wins (``{"db.status": "ok"}`` matches ``db.status``).
    """
    if path == "":
        return data
    if isinstance(data, Mapping):
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):
            key = ".".join(parts[:cut])
            if key in data:
                found = lookup(data[key], ".".join(parts[cut:]))
                if found is not _MISSING:
                    return found
        return _MISSING
    if isinstance(data, list):
        head, _sep, rest = path.partition(".")
        if re.fullmatch(r"-?\d+", head):
            index = int(head)
            if -len(data) <= index < len(data):
                return lookup(data[index], rest)
        return _MISSING
    return _MISSING


def as_text(value: Any) -> str:
    """Canonical text for comparing values of different types (JSON spelling for bool/null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def values_match(actual: Any, expected: Any) -> bool:
    """Equal values match; when the types differ compare as text, so 2 matches "2" and True matches "true".

    Versions are the common case: YAML reads ``version: 2`` as an int, the app returns "2".
    """
    if type(actual) is type(expected):
        return actual == expected
    if _is_number(actual) and _is_number(expected):
        return actual == expected
    left, right = as_text(actual).strip(), as_text(expected).strip()
    if isinstance(actual, bool) or isinstance(expected, bool):
        return left.lower() == right.lower()
    return left == right


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_json(body: str) -> tuple[Any, str | None]:
    try:
        return json.loads(body), None
    except ValueError as exc:
        return None, str(exc)


def evaluate(response: Response, expect: Expectations) -> list[str]:
    """Which expectations this response breaks, each as a sentence with the observed value. [] = healthy."""
    if response.status is None:
        return [f"request failed: {response.error}"]
    problems = []
    if response.status not in expect.status_codes:
        wanted = expect.status_codes[0] if len(expect.status_codes) == 1 else f"one of {expect.status_codes}"
        problems.append(f"status was {response.status}, expected {wanted}")
    body = response.body
    if expect.body_contains is not None and expect.body_contains not in body:
        problems.append(f"body does not contain {expect.body_contains!r} (body starts {_short(body)!r})")
    if expect.body_regex is not None and not expect.body_regex.search(body):
        problems.append(f"body does not match regex {expect.body_regex.pattern!r} (body starts {_short(body)!r})")
    if expect.json_fields:
        data, error = parse_json(body)
        if error is not None:
            problems.append(f"body is not JSON ({error}; body starts {_short(body)!r})")
        else:
            for path, wanted in expect.json_fields.items():
                actual = lookup(data, path)
                if actual is _MISSING:
                    problems.append(f"json field {path} is missing, expected {as_text(wanted)!r}")
                elif not values_match(actual, wanted):
                    problems.append(f"json field {path} was {as_text(actual)!r}, expected {as_text(wanted)!r}")
    return problems


# -- the polling loop ------------------------------------------------------------------------

@dataclass
class PollSettings:
    deadline: float = 60.0
    interval: float = 1.0
    consecutive: int = 1
    timeout: float = 5.0


def poll(
    fetch: Callable[[float], Response],
    expect: Expectations,
    settings: PollSettings,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Fetch until `consecutive` healthy responses in a row or the deadline; return the result facts.

    The first attempt always happens; later attempts happen only while the deadline is not
    reached, and each request's timeout is cut so that it cannot run far past the deadline.
    """
    start = clock()
    attempts = 0
    streak = 0
    last: Response = Response(error="no attempt made")
    problems: list[str] = ["no attempt made"]
    last_error: str | None = None
    while True:
        elapsed = clock() - start
        remaining = settings.deadline - elapsed
        timeout = settings.timeout if attempts == 0 else max(0.5, min(settings.timeout, remaining))
        last = fetch(timeout)
        attempts += 1
        problems = evaluate(last, expect)
        if problems:
            streak = 0
            last_error = problems[0]
        else:
            streak += 1
            if streak >= settings.consecutive:
                break
        elapsed = clock() - start
        if elapsed + settings.interval > settings.deadline:
            break
        sleep(settings.interval)

    healthy = not problems and streak >= settings.consecutive
    parsed, _err = parse_json(last.body) if last.body else (None, None)
    result = {
        "healthy": healthy,
        "status": last.status,
        "attempts": attempts,
        "successes_in_a_row": streak,
        "elapsed": round(clock() - start, 3),
        "json": parsed,
        "body": last.body[:BODY_EXCERPT],
        "last_error": last_error,
        "problems": problems,
    }
    return result


def failure_message(url: str, result: dict, settings: PollSettings) -> str:
    """Say exactly which expectation did not hold, with what was last observed."""
    head = (
        f"{url} was not healthy within the deadline of {settings.deadline:g}s "
        f"({result['attempts']} attempts in {result['elapsed']:.1f}s)"
    )
    if result["problems"]:
        return f"{head}: {'; '.join(result['problems'])}"
    # last response was good but not enough of them in a row
    return (
        f"{head}: only {result['successes_in_a_row']} healthy responses in a row, "
        f"{settings.consecutive} required (earlier: {result['last_error']})"
    )


# -- the real fetch ----------------------------------------------------------------------------

class UrlFetcher:
    """One HTTP request per call, via ansible.module_utils.urls (proxy, TLS and CA handling as in uri)."""

    def __init__(self, url: str, method: str = "GET", headers: Mapping[str, str] | None = None,
                 validate_certs: bool = True, ca_path: str | None = None, use_proxy: bool = True,
                 max_body: int = 1024 * 1024):
        from ansible.module_utils.urls import Request

        self.url = url
        self.method = method
        self.max_body = max_body
        self.request = Request(
            headers={str(k): str(v) for k, v in (headers or {}).items()},
            use_proxy=use_proxy,
            validate_certs=validate_certs,
            ca_path=ca_path,
            follow_redirects="safe",
            http_agent="safedeploy.django.http_healthcheck",
        )

    def __call__(self, timeout: float) -> Response:
        import urllib.error

        try:
            with self.request.open(self.method, self.url, timeout=timeout) as resp:
                return Response(status=resp.status, body=_decode(resp.read(self.max_body)))
        except urllib.error.HTTPError as exc:
            # 4xx/5xx still carry a status and usually a useful body
            try:
                body = exc.read(self.max_body) if exc.fp is not None else b""
            except Exception:  # noqa: BLE001 - the body is only an excerpt for the report
                body = b""
            return Response(status=exc.code, body=_decode(body))
        except urllib.error.URLError as exc:
            return Response(error=describe_transport_error(exc.reason, timeout))
        except TimeoutError as exc:
            return Response(error=describe_transport_error(exc, timeout))
        except (OSError, ssl.SSLError, ValueError) as exc:
            return Response(error=describe_transport_error(exc, timeout))
        except Exception as exc:  # noqa: BLE001 - e.g. http.client.RemoteDisconnected, BadStatusLine
            return Response(error=f"{type(exc).__name__}: {exc}")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def describe_transport_error(reason: object, timeout: float | None = None) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (nothing listens on that address and port)"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"timed out after {timeout:g}s" if timeout else "timed out"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {reason.verify_message} (set ca_path or validate_certs)"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve host name: {reason.strerror}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)
