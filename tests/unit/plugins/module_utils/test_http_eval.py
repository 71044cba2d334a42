"""Unit tests of module_utils/_http.py: evaluating responses and the polling loop (no network)."""

from __future__ import annotations

import json
import re

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils._http import (
    _MISSING,
    Expectations,
    PollSettings,
    Response,
    evaluate,
    failure_message,
    lookup,
    poll,
    values_match,
)

DOC = {"status": "ok", "version": "2.0.0", "checks": {"database": {"ok": True}}, "items": [{"name": "a"}, 7],
       "db.status": "up", "build": 42}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("status", "ok"),
        ("checks.database.ok", True),
        ("items.0.name", "a"),
        ("items.1", 7),
        ("items.-1", 7),
        ("db.status", "up"),
        ("", DOC),
    ],
)
def test_lookup_found(path, expected):
    assert lookup(DOC, path) == expected


@pytest.mark.parametrize("path", ["nope", "checks.cache", "items.5", "items.x", "status.deeper", "build.0"])
def test_lookup_missing(path):
    assert lookup(DOC, path) is _MISSING


@pytest.mark.parametrize(
    ("actual", "expected", "match"),
    [
        ("2.0.0", "2.0.0", True),
        ("2", 2, True),
        (2, "2", True),
        ("2.0", 2.0, True),
        (2, 2.0, True),
        (True, "true", True),
        ("True", True, True),
        (None, "null", True),
        ("1.0.0", "2.0.0", False),
        ("2.10", 2.1, False),  # why the docs say: quote versions in YAML
        (1, True, False),
        ({"a": 1}, {"a": 1}, True),
        ("ok", "OK", False),
    ],
)
def test_values_match(actual, expected, match):
    assert values_match(actual, expected) is match


def expect(**kwargs):
    return Expectations(**kwargs)


def ok_response(**doc):
    return Response(status=200, body=json.dumps(dict(DOC, **doc)))


def test_evaluate_healthy():
    e = expect(status_codes=[200], body_contains='"status"', body_regex=re.compile(r'"version":\s*"2\.'),
               json_fields={"version": "2.0.0", "checks.database.ok": True, "build": "42"})
    assert evaluate(ok_response(), e) == []


def test_evaluate_names_the_field_and_observed_value():
    problems = evaluate(ok_response(version="1.0.0"), expect(json_fields={"version": "2.0.0"}))
    assert problems == ["json field version was '1.0.0', expected '2.0.0'"]


def test_evaluate_missing_field():
    assert evaluate(ok_response(), expect(json_fields={"release": "2"})) == [
        "json field release is missing, expected '2'"
    ]


def test_evaluate_status():
    assert evaluate(Response(status=503, body="down"), expect()) == ["status was 503, expected 200"]
    assert evaluate(Response(status=503, body=""), expect(status_codes=[200, 204])) == [
        "status was 503, expected one of [200, 204]"
    ]


def test_evaluate_body_expectations():
    response = Response(status=200, body="<html>maintenance</html>")
    problems = evaluate(response, expect(body_contains="ready", body_regex=re.compile(r"^ok$")))
    assert problems[0] == "body does not contain 'ready' (body starts '<html>maintenance</html>')"
    assert problems[1].startswith("body does not match regex '^ok$'")


def test_evaluate_not_json():
    problems = evaluate(Response(status=200, body="<html>"), expect(json_fields={"version": "2"}))
    assert len(problems) == 1 and problems[0].startswith("body is not JSON (")


def test_evaluate_transport_error():
    assert evaluate(Response(error="connection refused"), expect()) == ["request failed: connection refused"]


def test_bad_regex_is_reported():
    with pytest.raises(ValueError, match="body_regex '\\(' is not a valid regular expression"):
        Expectations.from_params({"body_regex": "("})


class FakeClock:
    def __init__(self, request_cost=0.1):
        self.now = 100.0
        self.request_cost = request_cost
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def scripted(clock, responses):
    """A fetch returning the given responses in order (the last one repeats)."""
    import threading

    calls = []
    lock = threading.Lock()  # parallel attempts call it from several threads

    def fetch(timeout):
        with lock:
            calls.append(timeout)
            clock.now += clock.request_cost
            return responses[min(len(calls) - 1, len(responses) - 1)]

    fetch.calls = calls
    return fetch


DOWN = Response(status=503, body='{"status": "starting"}')
UP = Response(status=200, body='{"status": "ok", "version": "2.0.0"}')


def test_poll_becomes_healthy_after_failures():
    clock = FakeClock()
    fetch = scripted(clock, [DOWN, DOWN, DOWN, UP])
    result = poll(fetch, expect(), PollSettings(deadline=60, interval=1), clock.clock, clock.sleep)
    assert result["healthy"] is True and result["attempts"] == 4 and result["status"] == 200
    assert result["json"] == {"status": "ok", "version": "2.0.0"}
    assert result["last_error"] == "status was 503, expected 200"
    assert result["problems"] == []
    assert clock.sleeps == [1, 1, 1]


def test_poll_gives_up_at_deadline():
    clock = FakeClock()
    fetch = scripted(clock, [DOWN])
    settings = PollSettings(deadline=5, interval=1, timeout=5)
    result = poll(fetch, expect(), settings, clock.clock, clock.sleep)
    assert result["healthy"] is False
    assert 4 <= result["elapsed"] <= 5
    assert result["attempts"] == 5
    message = failure_message("http://h/healthz", result, settings)
    assert message.startswith("http://h/healthz was not healthy within the deadline of 5s (5 attempts in ")
    assert message.endswith(": status was 503, expected 200")
    # later requests are cut so they cannot overrun the deadline by much
    assert fetch.calls[0] == 5 and all(t <= 5 for t in fetch.calls)
    assert fetch.calls[-1] < 2


def test_poll_consecutive_resets_on_failure():
    clock = FakeClock()
    fetch = scripted(clock, [UP, DOWN, UP, UP, DOWN, UP, UP, UP, DOWN])
    result = poll(fetch, expect(), PollSettings(deadline=60, interval=0.5, consecutive=3), clock.clock, clock.sleep)
    assert result["healthy"] is True and result["attempts"] == 8 and result["successes_in_a_row"] == 3


def test_poll_consecutive_not_reached_message():
    clock = FakeClock()
    fetch = scripted(clock, [DOWN, UP])
    settings = PollSettings(deadline=2.5, interval=1, consecutive=5)
    result = poll(fetch, expect(), settings, clock.clock, clock.sleep)
    assert result["healthy"] is False and result["problems"] == []
    assert "only 2 healthy responses in a row, 5 required" in failure_message("u", result, settings)


def test_poll_makes_one_attempt_even_with_tiny_deadline():
    clock = FakeClock(request_cost=3)
    fetch = scripted(clock, [UP])
    result = poll(fetch, expect(), PollSettings(deadline=0.1, interval=1), clock.clock, clock.sleep)
    assert result["healthy"] is True and result["attempts"] == 1


def test_poll_body_excerpt_is_bounded():
    clock = FakeClock()
    fetch = scripted(clock, [Response(status=200, body="x" * 5000)])
    result = poll(fetch, expect(), PollSettings(), clock.clock, clock.sleep)
    assert result["body_excerpt"] == "x" * 512 + "...[truncated, body is 5000 bytes]" and result["json"] is None
    assert "body" not in result


def test_poll_counts_successes_and_returns_safe_headers():
    clock = FakeClock()
    up = Response(status=200, body='{"status": "ok", "db_password": "pw-123456"}',
                  headers=[("Content-Type", "application/json"), ("X-Release", "2.0.0"), ("Set-Cookie", "s=abc")])
    fetch = scripted(clock, [UP, DOWN, UP, up])
    result = poll(fetch, expect(), PollSettings(interval=0.5, consecutive=2), clock.clock, clock.sleep)
    assert result["healthy"] is True and result["attempts"] == 4
    assert result["successes"] == 3 and result["successes_in_a_row"] == 2
    assert result["headers"] == {"content-type": "application/json", "x-release": "2.0.0", "set-cookie": "********"}
    assert result["json"] == {"status": "ok", "db_password": "********"}
    assert result["body_excerpt"] == '{"status": "ok", "db_password": "********"}'


def test_poll_transport_error_result():
    clock = FakeClock()
    fetch = scripted(clock, [Response(error="connection refused")])
    settings = PollSettings(deadline=0, interval=1)
    result = poll(fetch, expect(), settings, clock.clock, clock.sleep)
    assert result["attempts"] == 1 and result["status"] is None and result["healthy"] is False
    assert result["headers"] == {} and result["body_excerpt"] == "" and result["json"] is None
    assert result["last_error"] == "request failed: connection refused"
    assert result["successes"] == 0
    assert failure_message("u", result, settings) == (
        "u was not healthy within the deadline of 0s (1 attempts in 0.1s): request failed: connection refused"
    )


def test_evaluate_quotes_the_body_redacted():
    response = Response(status=200, body='{"state": "starting", "api_key": "k-0123456789"}')
    problems = evaluate(response, expect(body_contains="ready", json_fields={"api_key": "x"}))
    assert "k-0123456789" not in repr(problems)
    assert problems[0] == ("body does not contain 'ready' "
                           "(body starts '{\"state\": \"starting\", \"api_key\": \"********\"}')")
    assert problems[1] == "json field api_key was '********', expected 'x'"


def test_evaluate_nested_json_field_mismatch():
    problems = evaluate(ok_response(), expect(json_fields={"checks.database.ok": False, "items.0.name": "a"}))
    assert problems == ["json field checks.database.ok was 'true', expected 'false'"]


def test_status_codes_out_of_range_are_refused():
    with pytest.raises(ValueError, match="^status_code 600 is not an HTTP status code \\(100 to 599\\)$"):
        Expectations.from_params({"status_code": [200, 600]})
    with pytest.raises(ValueError, match="^status_code 99 is not"):
        Expectations.from_params({"status_code": [99]})
    assert Expectations.from_params({"status_code": [100, 599]}).status_codes == [100, 599]


def test_parallel_attempt_is_healthy_only_when_every_request_is():
    clock = FakeClock()
    # attempt 1: one of four answers 503; attempts 2 and 3: all four answer
    fetch = scripted(clock, [UP, DOWN, UP, UP] + [UP] * 8)
    settings = PollSettings(deadline=60, interval=0.5, consecutive=2, parallel=4)
    result = poll(fetch, expect(), settings, clock.clock, clock.sleep)
    assert result["healthy"] is True
    assert result["attempts"] == 3 and result["requests"] == 12 and len(fetch.calls) == 12
    assert result["successes"] == 2 and result["successes_in_a_row"] == 2
    assert result["last_error"] == "1 of 4 parallel requests failed, the first: status was 503, expected 200"


def test_parallel_failure_reports_the_unhealthy_response():
    clock = FakeClock()
    fetch = scripted(clock, [UP, UP, DOWN])  # the third request of every attempt on fails
    settings = PollSettings(deadline=1, interval=1, parallel=3)
    result = poll(fetch, expect(), settings, clock.clock, clock.sleep)
    assert result["healthy"] is False and result["status"] == 503 and result["json"] == {"status": "starting"}
    assert result["problems"][0].startswith("1 of 3 parallel requests failed, the first: status was 503")


def test_parallel_requests_run_at_the_same_time():
    import threading

    barrier = threading.Barrier(4, timeout=5)

    def fetch(timeout):
        barrier.wait()  # breaks (and fails the attempt) unless four requests are in flight together
        return UP

    result = poll(fetch, expect(), PollSettings(deadline=0, parallel=4))
    assert result["healthy"] is True and result["requests"] == 4
