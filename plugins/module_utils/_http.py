# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP health polling: the logic behind safedeploy.django.http_healthcheck.

Private module. Checking the arguments (`prepare`), evaluating one response
(`evaluate`), redacting what is returned (`redact_text`, `redact_data`,
`excerpt`, `safe_headers`) and the polling loop (`poll`) are pure and take the
clock, the sleep and the fetch function as arguments, so they are unit tested
without a network; `UrlFetcher` is the real fetch built on
ansible.module_utils.urls, with a TLS context of its own (`build_tls_context`).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ansible_collections.safedeploy.django.plugins.module_utils._secrets import MASK, scrub

BODY_EXCERPT = 512
MAX_BODY = 1024 * 1024
METHODS = ("GET", "HEAD", "POST", "OPTIONS")
BODY_FORMATS = ("json", "raw")
MAX_PARALLEL = 64
_MISSING = object()


@dataclass
class Response:
    """One attempt: an HTTP status, headers and body, or a transport error (status None).

    ``size`` is the body's length in bytes when known (None when the read stopped at the
    size limit and the server sent no Content-Length); ``complete`` says whether ``body``
    holds all of it.
    """

    status: int | None = None
    body: str = ""
    error: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    size: int | None = None
    complete: bool = True

    def __post_init__(self):
        if self.size is None and self.complete:
            self.size = len(self.body.encode("utf-8"))


# -- secrets in what is returned ---------------------------------------------------------------

# Names of fields, parameters and headers whose values are secrets.
_SECRET_WORDS = (r"pass(?:word|wd|phrase)|secret|token|api[-_]?key|access[-_]?key|private[-_]?key|credential"
                 r"|authorization|cookie")
SECRET_NAME = re.compile(rf"{_SECRET_WORDS}|^pwd$|^pass$", re.IGNORECASE)
# Response headers returned as they are; any other header is returned too, but masked when its
# name looks secret (SECRET_NAME) and passed through redact_text otherwise.
_ALWAYS_MASKED_HEADERS = {"set-cookie", "cookie", "authorization", "proxy-authorization"}
# Request headers whose values are not secrets, so they are not masked in the output.
_PLAIN_REQUEST_HEADERS = {
    "host", "accept", "accept-encoding", "accept-language", "cache-control", "connection", "content-type",
    "user-agent", "x-forwarded-for", "x-forwarded-host", "x-forwarded-port", "x-forwarded-proto",
    "x-real-ip", "x-request-id", "origin", "referer",
}

_QUOTED_FIELD = re.compile(
    r"""(?P<key>(?P<q>["'])(?P<name>[^"'\\\n]{1,100})(?P=q)\s*:\s*)"""
    r"""(?P<value>"(?:[^"\\\n]|\\.)*(?:"|$)|'(?:[^'\\\n]|\\.)*(?:'|$)|[^\s,}\]]+)""",
    re.MULTILINE,
)
_ASSIGNMENT = re.compile(
    rf"""(?P<key>(?<![\w.-])(?P<name>[\w.-]{{0,50}}?(?:{_SECRET_WORDS})[\w.-]{{0,50}}|pwd|pass)(?![\w.-])"""
    r"""\s*(?:=|:(?!//))\s*)(?P<value>"[^"\n]*"?|'[^'\n]*'?|[^\s&;,"'<>]+)""",
    re.IGNORECASE,
)
_AUTH_SCHEME = re.compile(r"\b(?P<scheme>Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_URL_PASSWORD = re.compile(r"""(?P<head>\b[a-zA-Z][\w+.-]*://[^\s/:@"'<>]*:)[^\s@/"'<>]+(?=@)""")


def is_secret_name(name: object) -> bool:
    return isinstance(name, str) and bool(SECRET_NAME.search(name))


def _mask_value(match: re.Match) -> str:
    if not is_secret_name(match.group("name")):
        return match.group(0)
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('key')}{quote}{MASK}{quote}"


def redact_text(text: str) -> str:
    """Mask obvious secrets in free text: values of secret-looking keys in JSON (``"password": "x"``)
    and in ``key=value`` / ``key: value`` forms, ``Bearer`` / ``Basic`` credentials and URL passwords."""
    if not text:
        return text
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group('scheme')} {MASK}", text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}", text)
    text = _QUOTED_FIELD.sub(_mask_value, text)
    return _ASSIGNMENT.sub(_mask_value, text)


def redact_data(data: Any) -> Any:
    """Parsed JSON with the values of secret-looking keys masked (whole sub-trees included) and
    redact_text applied to the other strings."""
    if isinstance(data, Mapping):
        return {key: MASK if is_secret_name(key) else redact_data(value) for key, value in data.items()}
    if isinstance(data, list):
        return [redact_data(item) for item in data]
    if isinstance(data, str):
        return redact_text(data)
    return data


_REDACT_MARGIN = 1024


def excerpt(response: Response, size: int) -> str:
    """The first ``size`` bytes of the (redacted) body, decoded; a longer body ends with a marker
    saying how long it was."""
    # Only the start is redacted (a long body costs time): far enough past the cut that a secret
    # running across it is masked whole.
    text = redact_text(response.body[: size + _REDACT_MARGIN])
    if response.complete and response.size is not None and response.size <= size:
        return text
    cut = text.encode("utf-8")[:size].decode("utf-8", errors="ignore")
    total = f"{response.size} bytes" if response.size is not None else f"more than {MAX_BODY} bytes"
    return f"{cut}...[truncated, body is {total}]"


def safe_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Response headers by lower-case name (repeated headers joined with ``, ``); values of
    credential headers (Set-Cookie, Authorization, names like token or secret) masked."""
    result: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        masked = key in _ALWAYS_MASKED_HEADERS or is_secret_name(key)
        value = MASK if masked else redact_text(str(value))
        result[key] = f"{result[key]}, {value}" if key in result and result[key] != MASK else value
    return result


def sensitive_values(headers: Mapping[str, str], url: str) -> list[str]:
    """Values that must not appear anywhere in the output: request header values (but Host,
    Accept and the like), the URL's password and secret-looking query parameters."""
    values = [str(v) for k, v in headers.items() if str(k).lower() not in _PLAIN_REQUEST_HEADERS]
    parts = urlsplit(url)
    if parts.password:
        values.append(parts.password)
    values.extend(v for k, v in parse_qsl(parts.query) if is_secret_name(k))
    return sorted({v for v in values if _maskable(v)}, key=len, reverse=True)


def _maskable(value: str) -> bool:
    """Masking very short values, port-sized numbers or flags would garble every number or word in
    the output (the URL's port, the body), so those are not treated as secrets."""
    short_number = value.isdigit() and len(value) <= 5
    return len(value) >= 4 and not short_number and value.lower() not in {"true", "false", "none", "null"}


def safe_url(url: str) -> str:
    """The URL without user name and password, and with secret-looking query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc.rpartition("@")[2]
    return redact_text(urlunsplit(parts._replace(netloc=netloc)))


# -- the expectations ------------------------------------------------------------------------


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
        codes = list(params.get("status_code") or [200])
        for code in codes:
            if not 100 <= code <= 599:
                raise ValueError(f"status_code {code} is not an HTTP status code (100 to 599)")
        return cls(
            status_codes=codes,
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


def _starts(body: str) -> str:
    """The start of a body for a message, redacted."""
    return _short(redact_text(body[: 80 + _REDACT_MARGIN]))


def parse_json(body: str) -> tuple[Any, str | None]:
    try:
        return json.loads(body), None
    except ValueError as exc:
        return None, str(exc)


def evaluate(response: Response, expect: Expectations) -> list[str]:
    """Which expectations this response breaks, each as a sentence with the observed value. [] = healthy.

    Body text quoted in a sentence is redacted (redact_text); a secret-looking JSON field's
    observed value is masked.
    """
    if response.status is None:
        return [f"request failed: {response.error}"]
    problems = []
    if response.status not in expect.status_codes:
        wanted = expect.status_codes[0] if len(expect.status_codes) == 1 else f"one of {expect.status_codes}"
        problems.append(f"status was {response.status}, expected {wanted}")
    body = response.body
    if expect.body_contains is not None and expect.body_contains not in body:
        problems.append(f"body does not contain {expect.body_contains!r} (body starts {_starts(body)!r})")
    if expect.body_regex is not None and not expect.body_regex.search(body):
        problems.append(f"body does not match regex {expect.body_regex.pattern!r} (body starts {_starts(body)!r})")
    if expect.json_fields:
        data, error = parse_json(body)
        if error is not None:
            problems.append(f"body is not JSON ({error}; body starts {_starts(body)!r})")
        else:
            for path, wanted in expect.json_fields.items():
                actual = lookup(data, path)
                if actual is _MISSING:
                    problems.append(f"json field {path} is missing, expected {as_text(wanted)!r}")
                elif not values_match(actual, wanted):
                    seen = MASK if any(is_secret_name(part) for part in path.split(".")) else as_text(actual)
                    problems.append(f"json field {path} was {seen!r}, expected {as_text(wanted)!r}")
    return problems


# -- the arguments -----------------------------------------------------------------------------

@dataclass
class PollSettings:
    deadline: float = 60.0
    interval: float = 1.0
    consecutive: int = 1
    timeout: float = 5.0
    excerpt_size: int = BODY_EXCERPT
    parallel: int = 1


@dataclass
class TlsOptions:
    validate_certs: bool = True
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None


@dataclass
class Check:
    """The validated arguments of one health check."""

    url: str
    safe_url: str
    method: str
    headers: dict[str, str]
    data: bytes | None
    expect: Expectations
    settings: PollSettings
    tls: TlsOptions
    use_proxy: bool
    secrets: list[str]


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_url(url: str) -> tuple[str, str]:
    """(scheme, host) of an http(s) URL; ValueError naming what is wrong (password never shown)."""
    shown = safe_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"url {shown!r} is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"url {shown!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"url {shown!r} has no host name")
    return scheme, parts.hostname


def host_of(host_header: str) -> str:
    """Host name of a Host header value: ``shop.example:8443`` -> ``shop.example``, ``[::1]:80`` -> ``::1``."""
    value = host_header.strip()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _check_file(name: str, path: str | None) -> None:
    if path is None:
        return
    if not os.path.exists(path):
        raise ValueError(f"{name} {path} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"{name} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{name} {path} is not readable by this user")


def encode_body(method: str, body: Any, body_format: str | None, headers: dict[str, str]) -> bytes | None:
    """The request body as bytes (None without one); sets Content-Type for JSON unless a header gives one.

    A dict or list is sent as JSON; a string as it is (``body_format: raw``) or, with
    ``body_format: json``, as the JSON document it must be.
    """
    if body is None:
        if body_format is not None:
            raise ValueError("body_format needs a body")
        return None
    if method != "POST":
        raise ValueError(f"body is sent with method POST only, not {method}: set method: POST or drop body")
    if body_format is None:
        body_format = "raw" if isinstance(body, (str, bytes)) else "json"
    if body_format not in BODY_FORMATS:
        raise ValueError(f"body_format must be one of {', '.join(BODY_FORMATS)}, got {body_format}")
    if body_format == "raw":
        if not isinstance(body, (str, bytes)):
            raise ValueError(f"body_format raw needs a string body, got a {type(body).__name__}: "
                             "use body_format: json to send it as JSON")
        return body.encode("utf-8") if isinstance(body, str) else body
    if isinstance(body, (str, bytes)):
        try:
            json.loads(body)
        except ValueError as exc:
            raise ValueError(f"body is not valid JSON ({exc}); give a mapping or list, or body_format: raw") from exc
        data = body.encode("utf-8") if isinstance(body, str) else body
    else:
        try:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"body cannot be sent as JSON: {exc}") from exc
    if not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/json"
    return data


def prepare(params: Mapping) -> Check:
    """Validate the module's arguments; ValueError with a message naming the argument otherwise."""
    url = params["url"]
    scheme, _host = check_url(url)
    method = (params.get("method") or "GET").upper()
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method}")

    def number(name, default):
        value = params.get(name)
        return default if value is None else value

    timeout, interval = number("timeout", 5.0), number("interval", 1.0)
    deadline, consecutive = number("deadline", 60.0), number("consecutive", 1)
    excerpt_size = number("body_excerpt_size", BODY_EXCERPT)
    for name, value in (("timeout", timeout), ("interval", interval)):
        if value <= 0:
            raise ValueError(f"{name} must be greater than 0, got {value:g}")
    if deadline < 0:
        raise ValueError(f"deadline must be 0 or more, got {deadline:g}")
    if consecutive < 1:
        raise ValueError(f"consecutive must be 1 or more, got {consecutive}")
    if excerpt_size < 0:
        raise ValueError(f"body_excerpt_size must be 0 or more, got {excerpt_size}")
    parallel = number("parallel", 1)
    if not 1 <= parallel <= MAX_PARALLEL:
        raise ValueError(f"parallel must be from 1 to {MAX_PARALLEL}, got {parallel}")
    if params.get("status_code") is not None and not params["status_code"]:
        raise ValueError("status_code must list at least one status code")
    expect = Expectations.from_params(params)
    if method == "HEAD" and (expect.body_contains is not None or expect.body_regex or expect.json_fields):
        raise ValueError("method HEAD gets no body, so body_contains, body_regex and json cannot hold; use GET")

    headers = {}
    for name, value in (params.get("headers") or {}).items():
        name = str(name)
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"headers: {name!r} is not a valid header name")
        value = "" if value is None else str(value)
        if "\r" in value or "\n" in value:  # the value itself is never shown
            raise ValueError(f"headers: the value of {name} contains a line break")
        headers[name] = value
    data = encode_body(method, params.get("body"), params.get("body_format"), headers)

    tls = TlsOptions(
        validate_certs=bool(params.get("validate_certs", True)),
        ca_path=params.get("ca_path"),
        client_cert=params.get("client_cert"),
        client_key=params.get("client_key"),
        server_name=params.get("server_name"),
    )
    if tls.client_key and not tls.client_cert:
        raise ValueError("client_key needs client_cert (the certificate the key belongs to)")
    for name in ("ca_path", "client_cert", "client_key"):
        _check_file(name, getattr(tls, name))
    if tls.server_name is not None:
        tls.server_name = tls.server_name.strip()
        if not tls.server_name or any(ch.isspace() or ch in "/:@" for ch in tls.server_name):
            raise ValueError(f"server_name {tls.server_name!r} is not a host name")
    elif scheme == "https":
        host_header = next((v for k, v in headers.items() if k.lower() == "host"), None)
        if host_header:
            tls.server_name = host_of(host_header) or None

    return Check(
        url=url,
        safe_url=safe_url(url),
        method=method,
        headers=headers,
        data=data,
        expect=expect,
        settings=PollSettings(deadline=float(deadline), interval=float(interval), consecutive=int(consecutive),
                              timeout=float(timeout), excerpt_size=int(excerpt_size), parallel=int(parallel)),
        tls=tls,
        use_proxy=bool(params.get("use_proxy", True)),
        secrets=sensitive_values(headers, url),
    )


# -- the polling loop ------------------------------------------------------------------------

def poll(
    fetch: Callable[[float], Response],
    expect: Expectations,
    settings: PollSettings,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Fetch until `consecutive` healthy attempts in a row or the deadline; return the result facts.

    The first attempt always happens; later attempts happen only while the deadline is not
    reached, and each request's timeout is cut so that it cannot run far past the deadline.
    With `settings.parallel` > 1 an attempt is that many requests sent at once (each on its
    own connection), healthy only when every one of them is.
    """
    if settings.parallel > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=settings.parallel) as pool:
            def send(timeout: float) -> list[Response]:
                return list(pool.map(lambda _n: fetch(timeout), range(settings.parallel)))

            return _poll(send, expect, settings, clock, sleep)
    return _poll(lambda timeout: [fetch(timeout)], expect, settings, clock, sleep)


def _judge(responses: list[Response], expect: Expectations) -> tuple[Response, list[str], int]:
    """The response to report (the first unhealthy one, else the last), its problems, and how many failed."""
    failed = [(response, problems) for response in responses if (problems := evaluate(response, expect))]
    if not failed:
        return responses[-1], [], 0
    response, problems = failed[0]
    if len(responses) > 1:
        problems = [f"{len(failed)} of {len(responses)} parallel requests failed, the first: {problems[0]}",
                    *problems[1:]]
    return response, problems, len(failed)


def _poll(send, expect, settings, clock, sleep) -> dict:
    start = clock()
    attempts = 0
    requests = 0
    streak = 0
    successes = 0
    last: Response = Response(error="no attempt made")
    problems: list[str] = ["no attempt made"]
    last_error: str | None = None
    while True:
        elapsed = clock() - start
        remaining = settings.deadline - elapsed
        timeout = settings.timeout if attempts == 0 else max(0.5, min(settings.timeout, remaining))
        responses = send(timeout)
        attempts += 1
        requests += len(responses)
        last, problems, _failed = _judge(responses, expect)
        if problems:
            streak = 0
            last_error = problems[0]
        else:
            streak += 1
            successes += 1
            if streak >= settings.consecutive:
                break
        elapsed = clock() - start
        if elapsed + settings.interval > settings.deadline:
            break
        sleep(settings.interval)

    healthy = not problems and streak >= settings.consecutive
    parsed, _err = parse_json(last.body) if last.body and last.complete else (None, None)
    return {
        "healthy": healthy,
        "status": last.status,
        "attempts": attempts,
        "requests": requests,
        "successes": successes,
        "successes_in_a_row": streak,
        "elapsed": round(clock() - start, 3),
        "json": redact_data(parsed),
        "body_excerpt": excerpt(last, settings.excerpt_size),
        "headers": safe_headers(last.headers),
        "last_error": last_error,
        "problems": problems,
    }


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


def finish(result: dict, check: Check) -> tuple[dict, str | None]:
    """The module's result (secrets scrubbed, safe URL) and its failure message (None when healthy)."""
    result = dict(result, url=check.safe_url)
    msg = None if result["healthy"] else failure_message(check.safe_url, result, check.settings)
    return scrub(result, check.secrets), scrub(msg, check.secrets)


# -- the real fetch ----------------------------------------------------------------------------

class _ServerNameContext(ssl.SSLContext):
    """An SSLContext that presents `server_name` (SNI and the certificate name check) instead of
    the URL's host, for connections to that host only (not to a host a redirect leads to)."""

    server_name: str | None = None
    url_host: str | None = None

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, suppress_ragged_eofs=True,
                    server_hostname=None, session=None):
        if self.server_name and server_hostname and self.url_host and \
                server_hostname.lower() == self.url_host.lower():
            server_hostname = self.server_name
        return super().wrap_socket(sock, server_side=server_side, do_handshake_on_connect=do_handshake_on_connect,
                                   suppress_ragged_eofs=suppress_ragged_eofs, server_hostname=server_hostname,
                                   session=session)


def build_tls_context(tls: TlsOptions, url_host: str | None = None) -> ssl.SSLContext:
    """The client TLS context (as ansible.module_utils.urls.make_context builds it, plus server_name);
    ValueError when a CA or client certificate file cannot be loaded."""
    context = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
    context.server_name = tls.server_name
    context.url_host = url_host
    if not tls.validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif tls.ca_path:
        try:
            context.load_verify_locations(cafile=tls.ca_path)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"ca_path {tls.ca_path} holds no usable PEM certificate: {_ssl_reason(exc)}") from exc
    else:
        context.load_default_certs()
        try:
            from ansible.module_utils.urls import get_ca_certs

            cadata = get_ca_certs()[0]
            if cadata:
                context.load_verify_locations(cadata=cadata)
        except Exception:  # noqa: BLE001, S110 - the default certificates are loaded already
            pass
    if tls.client_cert:
        context.post_handshake_auth = True
        try:
            # a passphrase callback so that an encrypted key fails instead of prompting on a terminal
            context.load_cert_chain(tls.client_cert, keyfile=tls.client_key, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            what = f"client_cert {tls.client_cert}" + (f" / client_key {tls.client_key}" if tls.client_key else "")
            raise ValueError(
                f"cannot load {what}: {_ssl_reason(exc)} (PEM files needed; the key must match the certificate, "
                "not be encrypted, and be in client_cert when client_key is not given)"
            ) from exc
    return context


class UrlFetcher:
    """One HTTP request per call, via ansible.module_utils.urls (proxy and redirect handling as in uri)."""

    def __init__(self, url: str, method: str = "GET", headers: Mapping[str, str] | None = None,
                 tls: TlsOptions | None = None, use_proxy: bool = True, max_body: int = MAX_BODY,
                 data: bytes | None = None):
        from ansible.module_utils.urls import Request

        self.url = url
        self.method = method
        self.data = data
        self.max_body = max_body
        tls = tls or TlsOptions()
        self.context = build_tls_context(tls, urlsplit(url).hostname)
        self.tls = tls if urlsplit(url).scheme.lower() == "https" else None
        self.request = Request(
            headers={str(k): str(v) for k, v in (headers or {}).items()},
            use_proxy=use_proxy,
            context=self.context,
            follow_redirects="safe",
            http_agent="safedeploy.django.http_healthcheck",
        )

    def _response(self, status: int, resp) -> Response:
        headers = list(resp.headers.items()) if resp.headers is not None else []
        try:
            raw = resp.read(self.max_body + 1)
        except Exception:  # noqa: BLE001 - the body is only evidence for the report
            raw = b""
        complete = len(raw) <= self.max_body
        size = len(raw) if complete else _content_length(resp.headers)
        return Response(status=status, body=_decode(raw[: self.max_body], resp.headers), headers=headers,
                        size=size, complete=complete)

    def __call__(self, timeout: float) -> Response:
        import urllib.error

        try:
            with self.request.open(self.method, self.url, data=self.data, timeout=timeout) as resp:
                return self._response(resp.status, resp)
        except urllib.error.HTTPError as exc:
            # 4xx/5xx still carry a status and usually a useful body
            return self._response(exc.code, exc)
        except urllib.error.URLError as exc:
            return Response(error=describe_transport_error(exc.reason, timeout, self.tls))
        except Exception as exc:  # noqa: BLE001 - e.g. ssl.SSLError, http.client.RemoteDisconnected, BadStatusLine
            return Response(error=describe_transport_error(exc, timeout, self.tls))


def _content_length(headers) -> int | None:
    try:
        return int(headers.get("Content-Length"))
    except (TypeError, ValueError, AttributeError):
        return None


def _decode(raw: bytes, headers=None) -> str:
    charset = None
    if headers is not None:
        try:
            charset = headers.get_content_charset()
        except AttributeError:
            charset = None
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{text}" if not reason or reason in text else f"{reason}: {text}"


def _client_cert_hint(tls: TlsOptions | None) -> str:
    if tls is None:
        return ""
    if tls.client_cert:
        return "; does the server trust the client certificate (client_cert)?"
    return "; does the server require a client certificate (set client_cert)?"


# Why a TLS handshake failed, by OpenSSL reason code, with what to do about it.
_TLS_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate (set client_cert)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the handshake (a client certificate may be required: "
                                     "set client_cert)",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the client certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server rejected the client certificate (bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the server rejected the client certificate (certificate unknown)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server rejected the client certificate (expired)",
    "WRONG_VERSION_NUMBER": "the server does not speak TLS on this port (use http://?)",
    "TLSV1_UNRECOGNIZED_NAME": "the server does not know the TLS server name (check server_name or the Host header)",
}


def describe_transport_error(reason: object, timeout: float | None = None, tls: TlsOptions | None = None) -> str:
    """Why a request got no response, in words, with what to do about it where that is clear.

    ``tls`` is given for https:// URLs: a server that requires a client certificate and gets none
    (or one it does not trust) ends the connection right after the TLS handshake, and depending on
    timing the client sees its alert or just the connection closing.
    """
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (nothing listens on that address and port)"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"timed out after {timeout:g}s" if timeout else "timed out"
    if isinstance(reason, ssl.SSLCertVerificationError):
        message = reason.verify_message or str(reason)
        hint = "set server_name" if "mismatch" in message.lower() else "set ca_path or validate_certs"
        return f"TLS certificate verification failed: {message} ({hint})"
    if isinstance(reason, ssl.SSLError):
        code = getattr(reason, "reason", None) or ""
        known = _TLS_REASONS.get(code)
        if known:
            return f"TLS handshake failed: {known} [{code}]"
        if isinstance(reason, ssl.SSLEOFError) and tls is not None:
            return f"TLS error: the server closed the connection unexpectedly{_client_cert_hint(tls)}"
        return f"TLS error: {_ssl_reason(reason)}"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve host name: {reason.strerror}"
    if isinstance(reason, http.client.RemoteDisconnected):
        return f"the server closed the connection without a response{_client_cert_hint(tls)}"
    if isinstance(reason, ConnectionResetError):
        return f"connection reset by the server{_client_cert_hint(tls)}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    text = str(reason)
    if not isinstance(reason, (OSError, ValueError, str)):
        return f"{type(reason).__name__}: {text}" if text else type(reason).__name__
    return text
