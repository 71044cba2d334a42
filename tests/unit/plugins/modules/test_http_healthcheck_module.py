"""Unit tests of the http_healthcheck module's argument handling and result (the fetch is replaced)."""

from __future__ import annotations

from unittest import mock

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils import _http
from ansible_collections.safedeploy.django.plugins.module_utils._http import Response
from ansible_collections.safedeploy.django.plugins.modules import http_healthcheck

from tests.unit.plugins.modules.utils import run_module


class FakeFetcher:
    instances: list = []
    response = Response(status=200, body='{"status": "ok", "version": "2.0.0"}',
                        headers=[("Content-Type", "application/json")])

    def __init__(self, url, **kwargs):
        self.url, self.kwargs, self.calls = url, kwargs, 0
        FakeFetcher.instances.append(self)

    def __call__(self, timeout):
        self.calls += 1
        return FakeFetcher.response


@pytest.fixture(autouse=True)
def fake_fetch():
    FakeFetcher.instances = []
    with mock.patch.object(http_healthcheck, "UrlFetcher", FakeFetcher):
        yield
    FakeFetcher.response = Response(status=200, body='{"status": "ok", "version": "2.0.0"}',
                                    headers=[("Content-Type", "application/json")])


def test_healthy_result_and_options_passed_through():
    failed, result = run_module(http_healthcheck.main, {
        "url": "https://app1:8000/healthz", "headers": {"Host": "shop.example", "Authorization": "Bearer xyz-123"},
        "json": {"version": "2.0.0"}, "validate_certs": False, "interval": 0.01, "use_proxy": False,
    })
    assert not failed and result["healthy"] is True and result["changed"] is False
    fetcher = FakeFetcher.instances[0]
    assert fetcher.url == "https://app1:8000/healthz"
    assert fetcher.kwargs["headers"] == {"Host": "shop.example", "Authorization": "Bearer xyz-123"}
    assert fetcher.kwargs["tls"].validate_certs is False and fetcher.kwargs["tls"].ca_path is None
    assert fetcher.kwargs["tls"].server_name == "shop.example"  # from the Host header
    assert fetcher.kwargs["method"] == "GET" and fetcher.kwargs["use_proxy"] is False
    assert "xyz-123" not in repr(result)
    assert result["invocation"]["module_args"]["headers"] == {"Host": "********", "Authorization": "********"}
    assert set(result) >= {"healthy", "url", "status", "attempts", "successes", "successes_in_a_row", "elapsed",
                           "json", "body_excerpt", "headers", "last_error", "problems"}
    assert result["status"] == 200 and result["attempts"] == 1 and result["successes"] == 1
    assert result["headers"] == {"content-type": "application/json"}
    assert result["body_excerpt"] == '{"status": "ok", "version": "2.0.0"}'
    assert result["last_error"] is None and result["problems"] == []


def test_tls_files_passed_through(tmp_path):
    files = {name: tmp_path / f"{name}.pem" for name in ("ca_path", "client_cert", "client_key")}
    for path in files.values():
        path.write_text("x")
    failed, result = run_module(http_healthcheck.main, {
        "url": "https://10.0.0.1/healthz", "server_name": "shop.example", **{k: str(v) for k, v in files.items()},
    })
    assert not failed, result["msg"]
    tls = FakeFetcher.instances[0].kwargs["tls"]
    assert (tls.ca_path, tls.client_cert, tls.client_key) == tuple(str(p) for p in files.values())
    assert tls.server_name == "shop.example" and tls.validate_certs is True


def test_unhealthy_fails_with_expectation():
    failed, result = run_module(http_healthcheck.main, {
        "url": "http://app1/healthz", "json": {"version": "3.0.0"}, "deadline": 0, "interval": 0.01,
    })
    assert failed and result["healthy"] is False and result["changed"] is False
    assert result["msg"].startswith("http://app1/healthz was not healthy within the deadline of 0s (1 attempts in ")
    assert result["msg"].endswith("json field version was '2.0.0', expected '3.0.0'")
    assert result["last_error"] == "json field version was '2.0.0', expected '3.0.0'"


def test_secrets_in_url_and_headers_never_returned():
    FakeFetcher.response = Response(status=503, body="echo: tok-abcdef url-pass-1 password=hunter22",
                                    headers=[("X-Echo", "tok-abcdef")])
    failed, result = run_module(http_healthcheck.main, {
        "url": "http://user:url-pass-1@app1/healthz", "headers": {"X-Health-Token": "tok-abcdef"},
        "deadline": 0,
    })
    assert failed
    assert FakeFetcher.instances[0].url == "http://user:url-pass-1@app1/healthz"  # the request has them
    text = repr(result)
    for secret in ("tok-abcdef", "url-pass-1", "hunter22"):
        assert secret not in text
    assert result["url"] == "http://app1/healthz"
    assert result["invocation"]["module_args"]["url"] == "http://app1/healthz"
    assert result["body_excerpt"] == "echo: ******** ******** password=********"
    assert result["msg"].startswith("http://app1/healthz was not healthy")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"url": "app1/healthz"}, "url 'app1/healthz' must start with http:// or https://"),
        ({"url": "http://"}, "url 'http://' has no host name"),
        ({"url": "http://a", "consecutive": 0}, "consecutive must be 1 or more, got 0"),
        ({"url": "http://a", "deadline": -1}, "deadline must be 0 or more, got -1"),
        ({"url": "http://a", "interval": 0}, "interval must be greater than 0, got 0"),
        ({"url": "http://a", "timeout": 0}, "timeout must be greater than 0, got 0"),
        ({"url": "http://a", "body_regex": "(unclosed"},
         "body_regex '(unclosed' is not a valid regular expression: missing ), unterminated subpattern"),
        ({"url": "http://a", "status_code": []}, "status_code must list at least one status code"),
        ({"url": "http://a", "status_code": [200, 700]}, "status_code 700 is not an HTTP status code (100 to 599)"),
        ({"url": "http://a", "client_key": "/k.pem"}, "missing parameter(s) required by 'client_key': client_cert"),
        ({"url": "http://a", "ca_path": "/nonexistent/ca.pem"}, "ca_path /nonexistent/ca.pem does not exist"),
        ({"url": "http://a", "method": "HEAD", "body_contains": "ok"}, "method HEAD gets no body"),
        ({"url": "http://a", "bogus": 1}, "Unsupported parameters"),
        ({"url": "http://a", "method": "DELETE"}, "value of method must be one of"),
        ({"url": "http://a", "consecutive": "three"}, "consecutive"),
    ],
)
def test_bad_input(args, message):
    failed, result = run_module(http_healthcheck.main, args)
    assert failed and message in result["msg"], result["msg"]
    assert not FakeFetcher.instances


def test_bad_input_result_has_no_url_password():
    failed, result = run_module(http_healthcheck.main, {"url": "http://u:pw-123456@a/x", "interval": 0})
    assert failed and result["msg"] == "interval must be greater than 0, got 0"
    assert result["url"] == "http://a/x" and "pw-123456" not in repr(result)
    assert result["healthy"] is False


def test_unloadable_certificate_fails_before_any_request(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    # the real fetcher builds its TLS context when created, before the first request
    with mock.patch.object(http_healthcheck, "UrlFetcher", _http.UrlFetcher):
        failed, result = run_module(http_healthcheck.main, {"url": "https://a/x", "client_cert": str(bad)})
    assert failed and result["msg"].startswith(f"cannot load client_cert {bad}: ")
    assert result["healthy"] is False


def test_check_mode_polls_and_reports_unchanged():
    failed, result = run_module(http_healthcheck.main, {"url": "http://a/x", "_ansible_check_mode": True})
    assert not failed and result["healthy"] is True and result["changed"] is False
    assert FakeFetcher.instances[0].calls == 1
