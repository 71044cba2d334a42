"""Unit tests of what module_utils/_http.py lets out: redacted body text and JSON, the body excerpt,
response headers, the URL and the request values masked everywhere (no network)."""

from __future__ import annotations

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils._http import (
    MAX_BODY,
    Response,
    excerpt,
    host_of,
    is_secret_name,
    redact_data,
    redact_text,
    safe_headers,
    safe_url,
    sensitive_values,
)


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ('{"password": "hunter2", "user": "bob"}', '{"password": "********", "user": "bob"}'),
        ('{"api_key": 12345, "status": "ok"}', '{"api_key": ********, "status": "ok"}'),
        ('{"DB_PASSWORD":"a\\"b", "x": 1}', '{"DB_PASSWORD":"********", "x": 1}'),
        ("{'secret': 'sss', 'ok': 1}", "{'secret': '********', 'ok': 1}"),
        ('{"access_token": "cut off at the end of the rea', '{"access_token": "********"'),
        ("SECRET_KEY=abc123 DEBUG=False", "SECRET_KEY=******** DEBUG=False"),
        ("password: hunter2\nversion: 2.0.0", "password: ********\nversion: 2.0.0"),
        ("client_secret = 'x y'", "client_secret = '********'"),
        ("/cb?code=1&token=abc&next=/", "/cb?code=1&token=********&next=/"),
        ("pass=x bypass=y passenger=z", "pass=******** bypass=y passenger=z"),
        ("db: postgres://app:s3cr3t@db:5432/shop", "db: postgres://app:********@db:5432/shop"),
        ("Authorization: Bearer eyJhbGciOi.abc", "Authorization: ******** ********"),
        ("sent Basic dXNlcjpwYXNz to the proxy", "sent Basic ******** to the proxy"),
        ("version=2.0.0 see https://example.com/x?a=1", "version=2.0.0 see https://example.com/x?a=1"),
        ("Basic checks passed", "Basic checks passed"),
        ("", ""),
    ],
)
def test_redact_text(text, redacted):
    assert redact_text(text) == redacted


@pytest.mark.parametrize("name", ["password", "DB_PASSWORD", "passwd", "secret_key", "X-Auth-Token", "api_key",
                                  "apiKey", "aws_access_key_id", "private_key", "credentials", "authorization",
                                  "Cookie", "pwd", "pass"])
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["status", "version", "database", "passenger", "bypass", "key", "author", 3])
def test_plain_names(name):
    assert not is_secret_name(name)


def test_redact_data_masks_secret_keys_whole_and_redacts_strings():
    data = {"status": "ok", "credentials": {"user": "u", "pw": "p"}, "checks": [{"token": 7, "ok": True}],
            "dsn": "postgres://u:pw-1234@h/db", "count": 3, "none": None}
    assert redact_data(data) == {"status": "ok", "credentials": "********", "checks": [{"token": "********",
                                 "ok": True}], "dsn": "postgres://u:********@h/db", "count": 3, "none": None}
    assert redact_data(None) is None and redact_data([1, "a"]) == [1, "a"]


def body(text: str, **kwargs) -> Response:
    return Response(status=200, body=text, **kwargs)


def test_excerpt_short_body_whole():
    assert excerpt(body('{"status": "ok"}'), 512) == '{"status": "ok"}'
    assert excerpt(body(""), 512) == ""
    assert excerpt(body("x" * 512), 512) == "x" * 512


def test_excerpt_long_body_cut_with_marker():
    assert excerpt(body("x" * 513), 512) == "x" * 512 + "...[truncated, body is 513 bytes]"
    assert excerpt(body("abc"), 0) == "...[truncated, body is 3 bytes]"


def test_excerpt_counts_bytes_and_never_splits_a_character():
    text = "é" * 10  # 2 bytes each
    assert excerpt(body(text), 5) == "éé...[truncated, body is 20 bytes]"


def test_excerpt_redacts_before_cutting():
    # the secret runs across the cut: none of it shows, not even its start
    text = '{"status": "ok", "password": "' + "p" * 40 + '", "tail": "' + "t" * 100 + '"}'
    result = excerpt(body(text), 40)
    assert "p" * 3 not in result.replace("password", "")
    assert result.startswith('{"status": "ok", "password": "****')
    assert result.endswith(f"...[truncated, body is {len(text)} bytes]")


def test_excerpt_of_a_body_longer_than_what_was_read():
    partial = body("y" * 100, size=None, complete=False)
    assert excerpt(partial, 10) == "y" * 10 + f"...[truncated, body is more than {MAX_BODY} bytes]"
    known = body("y" * 100, size=5_000_000, complete=False)
    assert excerpt(known, 10) == "y" * 10 + "...[truncated, body is 5000000 bytes]"


def test_safe_headers():
    headers = [("Content-Type", "application/json"), ("X-Release", "2.0.0"), ("Set-Cookie", "sid=abc; HttpOnly"),
               ("Set-Cookie", "csrftoken=def"), ("X-Auth-Token", "tok-1"), ("Vary", "Accept"), ("Vary", "Cookie"),
               ("Location", "https://u:pw@example/cb?token=xyz")]
    assert safe_headers(headers) == {
        "content-type": "application/json", "x-release": "2.0.0", "set-cookie": "********",
        "x-auth-token": "********", "vary": "Accept, Cookie", "location": "https://u:********@example/cb?token=********",
    }
    assert safe_headers([]) == {}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pw-1@h:8443/healthz", "https://h:8443/healthz"),
        ("http://user@h/healthz", "http://h/healthz"),
        ("http://h/healthz?token=abc&a=1", "http://h/healthz?token=********&a=1"),
        ("http://10.0.0.1:8000/healthz", "http://10.0.0.1:8000/healthz"),
        ("http://[::1]:8000/x", "http://[::1]:8000/x"),
    ],
)
def test_safe_url(url, shown):
    assert safe_url(url) == shown


def test_sensitive_values():
    headers = {"Host": "shop.example", "Accept": "application/json", "X-Health-Token": "tok-123456",
               "Authorization": "Bearer abcdef", "X-Short": "abc", "X-Port": "8000", "X-Debug": "true",
               "X-Long-Number": "123456"}
    values = sensitive_values(headers, "https://user:url-pass@h/x?api_key=key-999&a=hello")
    assert values == ["Bearer abcdef", "tok-123456", "url-pass", "key-999", "123456"]


@pytest.mark.parametrize(
    ("header", "host"),
    [("shop.example", "shop.example"), ("shop.example:8443", "shop.example"), ("[::1]:80", "::1"),
     ("[::1]", "::1"), ("::1", "::1"), (" shop.example ", "shop.example")],
)
def test_host_of(header, host):
    assert host_of(header) == host


def test_excerpt_of_a_long_body_with_a_long_secret_across_the_cut():
    text = "x" * 500 + '"token": "' + "t" * 5000 + '"' + "y" * MAX_BODY
    result = excerpt(body(text), 512)
    assert result == "x" * 500 + '"token": "**' + f"...[truncated, body is {len(text)} bytes]"
