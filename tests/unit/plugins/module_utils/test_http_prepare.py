"""Unit tests of module_utils/_http.py's argument checks (`prepare`) and final result (`finish`)."""

from __future__ import annotations

import os

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils._http import (
    PollSettings,
    finish,
    prepare,
)


def params(**kwargs):
    base = {"url": "http://app1:8000/healthz"}
    base.update(kwargs)
    return base


def test_defaults():
    check = prepare(params())
    assert check.url == check.safe_url == "http://app1:8000/healthz"
    assert check.method == "GET" and check.headers == {} and check.use_proxy is True
    assert check.settings == PollSettings(deadline=60, interval=1, consecutive=1, timeout=5, excerpt_size=512)
    assert check.expect.status_codes == [200] and check.expect.json_fields == {}
    assert check.tls.validate_certs is True and check.tls.server_name is None
    assert check.secrets == []


def test_module_style_params_with_nulls():
    # AnsibleModule passes every option, unset ones as None
    check = prepare(params(method="GET", status_code=[200, 204], body_contains=None, body_regex=None, json=None,
                           headers=None, validate_certs=True, ca_path=None, client_cert=None, client_key=None,
                           server_name=None, use_proxy=False, timeout=2.0, interval=0.5, deadline=0.0,
                           consecutive=3, body_excerpt_size=0))
    assert check.settings == PollSettings(deadline=0, interval=0.5, consecutive=3, timeout=2, excerpt_size=0)
    assert check.expect.status_codes == [200, 204] and check.use_proxy is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"url": "app1/healthz"}, "url 'app1/healthz' must start with http:// or https://"),
        ({"url": "ftp://app1/x"}, "url 'ftp://app1/x' must start with http:// or https://"),
        ({"url": "http:///healthz"}, "url 'http:///healthz' has no host name"),
        ({"url": "http://app1:99999/x"}, "url 'http://app1:99999/x' is not a valid URL: Port out of range 0-65535"),
        ({"url": "http://app1:port/x"}, "url 'http://app1:port/x' is not a valid URL: "),
        ({"url": "https://u:pw-secret@:8443/x"}, "url 'https://:8443/x' has no host name"),
        ({"timeout": 0}, "timeout must be greater than 0, got 0"),
        ({"interval": 0}, "interval must be greater than 0, got 0"),
        ({"interval": -0.5}, "interval must be greater than 0, got -0.5"),
        ({"deadline": -1}, "deadline must be 0 or more, got -1"),
        ({"consecutive": 0}, "consecutive must be 1 or more, got 0"),
        ({"body_excerpt_size": -1}, "body_excerpt_size must be 0 or more, got -1"),
        ({"status_code": []}, "status_code must list at least one status code"),
        ({"status_code": [200, 999]}, "status_code 999 is not an HTTP status code (100 to 599)"),
        ({"body_regex": "(unclosed"},
         "body_regex '(unclosed' is not a valid regular expression: missing ), unterminated subpattern at position 0"),
        ({"method": "DELETE"}, "method must be one of GET, HEAD, POST, OPTIONS, got DELETE"),
        ({"method": "HEAD", "json": {"version": "2"}},
         "method HEAD gets no body, so body_contains, body_regex and json cannot hold; use GET"),
        ({"method": "HEAD", "body_contains": ""}, "method HEAD gets no body"),
        ({"headers": {"X Bad": "1"}}, "headers: 'X Bad' is not a valid header name"),
        ({"headers": {"X-Token": "abc\r\nX-Injected: 1"}}, "headers: the value of X-Token contains a line break"),
        ({"client_key": "/etc/key.pem"}, "client_key needs client_cert (the certificate the key belongs to)"),
        ({"ca_path": "/nonexistent/ca.pem"}, "ca_path /nonexistent/ca.pem does not exist"),
        ({"client_cert": "/nonexistent/c.pem"}, "client_cert /nonexistent/c.pem does not exist"),
        ({"client_cert": "/", "client_key": "/"}, "client_cert / is not a file"),
        ({"server_name": "shop.example:443"}, "server_name 'shop.example:443' is not a host name"),
        ({"server_name": " "}, "server_name '' is not a host name"),
        ({"parallel": 0}, "parallel must be from 1 to 64, got 0"),
        ({"parallel": 65}, "parallel must be from 1 to 64, got 65"),
        ({"body": {"a": 1}}, "body is sent with method POST only, not GET: set method: POST or drop body"),
        ({"method": "HEAD", "body": "x"}, "body is sent with method POST only, not HEAD"),
        ({"method": "POST", "body_format": "json"}, "body_format needs a body"),
        ({"method": "POST", "body": "{not json", "body_format": "json"}, "body is not valid JSON ("),
        ({"method": "POST", "body": {"a": 1}, "body_format": "raw"},
         "body_format raw needs a string body, got a dict: use body_format: json to send it as JSON"),
        ({"method": "POST", "body": {"when": object()}}, "body cannot be sent as JSON: "),
    ],
)
def test_bad_arguments(args, message):
    with pytest.raises(ValueError) as caught:
        prepare(params(**args))
    assert str(caught.value).startswith(message)
    assert "pw-secret" not in str(caught.value)


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    key = tmp_path / "key.pem"
    key.write_text("x")
    key.chmod(0)
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ValueError, match=f"^client_key {key} is not readable by this user$"):
        prepare(params(client_cert=str(cert), client_key=str(key)))


def test_existing_files_accepted(tmp_path):
    files = {name: tmp_path / f"{name}.pem" for name in ("ca_path", "client_cert", "client_key")}
    for path in files.values():
        path.write_text("x")
    check = prepare(params(**{name: str(path) for name, path in files.items()}))
    assert (check.tls.ca_path, check.tls.client_cert, check.tls.client_key) == tuple(str(p) for p in files.values())


def test_server_name_follows_the_host_header_for_https():
    check = prepare(params(url="https://10.0.0.11:8443/healthz", headers={"host": "shop.example:8443"}))
    assert check.tls.server_name == "shop.example"
    assert check.headers == {"host": "shop.example:8443"}


def test_explicit_server_name_wins_over_the_host_header():
    check = prepare(params(url="https://10.0.0.11/healthz", headers={"Host": "a.example"}, server_name="b.example"))
    assert check.tls.server_name == "b.example"


def test_host_header_does_not_set_server_name_for_http():
    assert prepare(params(headers={"Host": "shop.example"})).tls.server_name is None


def test_header_values_become_text_and_secrets_are_collected():
    check = prepare(params(url="http://u:url-pass@app1/x", headers={"Host": "shop.example", "X-Port": 8000,
                                                                    "X-Health-Token": "tok-123456"}))
    assert check.headers == {"Host": "shop.example", "X-Port": "8000", "X-Health-Token": "tok-123456"}
    assert check.secrets == ["tok-123456", "url-pass"]
    assert check.safe_url == "http://app1/x" and check.url == "http://u:url-pass@app1/x"


def test_method_is_case_insensitive():
    assert prepare(params(method="head")).method == "HEAD"


def poll_result(**kwargs):
    result = {"healthy": False, "status": 200, "attempts": 3, "successes": 0, "successes_in_a_row": 0,
              "elapsed": 2.0, "json": None, "body_excerpt": "echo tok-123456", "headers": {"x-echo": "tok-123456"},
              "last_error": "body does not contain 'ready' (body starts 'echo tok-123456')",
              "problems": ["body does not contain 'ready' (body starts 'echo tok-123456')"]}
    result.update(kwargs)
    return result


def test_finish_scrubs_request_secrets_and_uses_the_safe_url():
    check = prepare(params(url="http://u:url-pass@app1/x", headers={"X-Health-Token": "tok-123456"}, deadline=2))
    result, msg = finish(poll_result(), check)
    assert result["url"] == "http://app1/x"
    assert result["body_excerpt"] == "echo ********" and result["headers"] == {"x-echo": "********"}
    assert msg == ("http://app1/x was not healthy within the deadline of 2s (3 attempts in 2.0s): "
                   "body does not contain 'ready' (body starts 'echo ********')")
    assert "tok-123456" not in repr(result) and "url-pass" not in repr(result)


def test_finish_healthy_has_no_message():
    check = prepare(params())
    result, msg = finish(poll_result(healthy=True, problems=[], successes=1, successes_in_a_row=1), check)
    assert msg is None and result["healthy"] is True and result["url"] == "http://app1:8000/healthz"


def test_a_mapping_body_is_sent_as_json_with_its_content_type():
    check = prepare(params(method="POST", body={"customer": "w@example.com", "lines": {"SKU-1": 1}}))
    assert check.data == b'{"customer":"w@example.com","lines":{"SKU-1":1}}'
    assert check.headers == {"Content-Type": "application/json"}


def test_a_string_body_is_sent_as_it_is_and_a_given_content_type_wins():
    form = {"content-type": "application/x-www-form-urlencoded"}
    check = prepare(params(method="post", body="a=1&b=2", headers=dict(form)))
    assert check.data == b"a=1&b=2" and check.headers == form
    assert prepare(params(method="POST", body='{"a": 1}', body_format="json")).headers["Content-Type"] == \
        "application/json"


def test_no_body_no_data_and_parallel_reaches_the_settings():
    check = prepare(params(method="POST", parallel=8, body=None, body_format=None))
    assert check.data is None and check.headers == {} and check.settings.parallel == 8
