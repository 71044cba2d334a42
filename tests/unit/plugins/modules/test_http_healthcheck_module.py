"""Unit tests of the http_healthcheck module's argument handling (the fetch is replaced)."""

from __future__ import annotations

from unittest import mock

import pytest
from ansible_collections.safedeploy.django.plugins.modules import http_healthcheck

from tests.unit.plugins.modules.utils import run_module


class FakeFetcher:
    instances: list = []

    def __init__(self, url, **kwargs):
        self.url, self.kwargs, self.calls = url, kwargs, 0
        FakeFetcher.instances.append(self)

    def __call__(self, timeout):
        from ansible_collections.safedeploy.django.plugins.module_utils._http import Response

        self.calls += 1
        return Response(status=200, body='{"status": "ok", "version": "2.0.0"}')


@pytest.fixture(autouse=True)
def fake_fetch():
    FakeFetcher.instances = []
    with mock.patch.object(http_healthcheck, "UrlFetcher", FakeFetcher):
        yield


def test_healthy_result_and_options_passed_through():
    failed, result = run_module(http_healthcheck.main, {
        "url": "https://app1:8000/healthz", "headers": {"Host": "shop.example", "Authorization": "Bearer xyz"},
        "json": {"version": "2.0.0"}, "validate_certs": False, "ca_path": "/ca.pem", "interval": 0,
    })
    assert not failed and result["healthy"] is True and result["changed"] is False
    fetcher = FakeFetcher.instances[0]
    assert fetcher.kwargs["headers"] == {"Host": "shop.example", "Authorization": "Bearer xyz"}
    assert fetcher.kwargs["validate_certs"] is False and fetcher.kwargs["ca_path"] == "/ca.pem"
    assert fetcher.kwargs["method"] == "GET"
    assert "Bearer xyz" not in repr(result)
    assert result["invocation"]["module_args"]["headers"] == {"Host": "********", "Authorization": "********"}


def test_unhealthy_fails_with_expectation():
    failed, result = run_module(http_healthcheck.main, {
        "url": "http://app1/healthz", "json": {"version": "3.0.0"}, "deadline": 0.01, "interval": 0,
    })
    assert failed and result["healthy"] is False
    assert result["msg"].endswith("json field version was '2.0.0', expected '3.0.0'")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"url": "app1/healthz"}, "must start with http:// or https://"),
        ({"url": "http://a", "consecutive": 0}, "consecutive must be 1 or more, got 0"),
        ({"url": "http://a", "deadline": 0}, "deadline must be greater than 0"),
        ({"url": "http://a", "interval": -1}, "interval must be 0 or more"),
        ({"url": "http://a", "body_regex": "(unclosed"}, "is not a valid regular expression"),
        ({"url": "http://a", "status_code": []}, "at least one status code"),
        ({"url": "http://a", "bogus": 1}, "Unsupported parameters"),
        ({"url": "http://a", "method": "DELETE"}, "value of method must be one of"),
    ],
)
def test_bad_input(args, message):
    failed, result = run_module(http_healthcheck.main, args)
    assert failed and message in result["msg"]
    assert not FakeFetcher.instances or FakeFetcher.instances[0].calls == 0
