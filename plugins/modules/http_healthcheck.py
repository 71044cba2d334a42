#!/usr/bin/python
# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: http_healthcheck
short_description: Wait until an HTTP endpoint is healthy, or fail saying what did not hold
version_added: 0.1.0
description:
  - Requests O(url) every O(interval) seconds until a response meets every expectation (O(status_code),
    O(body_contains), O(body_regex), O(json)) O(consecutive) times in a row, or fails once O(deadline)
    seconds have passed.
  - The failure message names the expectation that did not hold and the value last observed, for example
    C(json field version was '1.0.0', expected '2.0.0'), or the last connection error.
  - Read-only, so it runs in check mode too and always reports C(changed=false).
author:
  - safedeploy.django maintainers (@safedeploy)
attributes:
  check_mode:
    support: full
    description:
      - Only reads, so in check mode it polls for real and reports the same result.
  diff_mode:
    support: none
    description:
      - Does not return a diff.
  idempotent:
    support: full
    description:
      - Never changes anything; C(changed) is always V(false).
options:
  url:
    description:
      - URL to poll, C(http://) or C(https://).
    type: str
    required: true
  method:
    description:
      - HTTP method. Redirects are followed for V(GET) and V(HEAD) only.
    type: str
    default: GET
    choices: [GET, HEAD, POST, OPTIONS]
  status_code:
    description:
      - Status codes that count as healthy.
    type: list
    elements: int
    default: [200]
  body_contains:
    description:
      - Text the response body must contain.
    type: str
  body_regex:
    description:
      - Python regular expression that must match somewhere in the body (multiline mode, C(re.search)).
    type: str
  json:
    description:
      - Fields the body, parsed as JSON, must have. Keys are dotted paths (V(version), V(checks.database),
        V(items.0.name); digits index lists), values the expected values.
      - When the types differ the values are compared as text, so V(2) matches V("2") and V(true) matches
        V("true"). Quote version numbers in YAML (V("2.10"), not V(2.10), which YAML reads as the float 2.1).
    type: dict
  headers:
    description:
      - Extra request headers, for example C(Host) to reach one virtual host on a backend address, or
        C(X-Forwarded-Proto).
      - Header values are not returned by the module (they show as V(********) in the invocation); use
        C(no_log) on the task anyway if a header carries a secret, because Ansible may log task arguments.
    type: dict
  validate_certs:
    description:
      - Verify the server's TLS certificate. Set to V(false) only for self-signed test setups.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file with the certificate authorities to trust for HTTPS.
    type: path
  use_proxy:
    description:
      - Use the proxy from the E(https_proxy) / E(http_proxy) environment variables (E(no_proxy) is honoured).
    type: bool
    default: true
  timeout:
    description:
      - Seconds a single request may take. Later attempts are cut short so as not to run far past O(deadline).
    type: float
    default: 5
  interval:
    description:
      - Seconds to wait between attempts.
    type: float
    default: 1
  deadline:
    description:
      - Seconds after which the module gives up and fails. The first request is always made.
    type: float
    default: 60
  consecutive:
    description:
      - Number of healthy responses in a row required. An unhealthy response resets the count.
    type: int
    default: 1
notes:
  - Uses C(ansible.module_utils.urls), like M(ansible.builtin.uri), for TLS, proxies and redirects.
seealso:
  - module: ansible.builtin.uri
  - module: ansible.builtin.wait_for
"""

EXAMPLES = r"""
- name: Wait until the new release answers on this host, three times in a row
  safedeploy.django.http_healthcheck:
    url: "http://{{ ansible_host }}:8000/healthz"
    headers:
      Host: shop.example.com
    json:
      status: ok
      version: "{{ release_version }}"
    consecutive: 3
    interval: 1
    deadline: 90
  register: health

- name: Check through the load balancer with a private CA
  safedeploy.django.http_healthcheck:
    url: https://shop.example.com/healthz
    ca_path: /etc/ssl/certs/internal-ca.pem
    status_code: [200, 204]
    body_regex: '"database":\s*"ok"'
    deadline: 30
"""

RETURN = r"""
healthy:
  description: Whether the expectations held O(consecutive) times in a row before the deadline.
  returned: always
  type: bool
  sample: true
url:
  description: The URL polled.
  returned: always
  type: str
  sample: http://10.0.0.11:8000/healthz
status:
  description: HTTP status of the last response; V(null) when the last attempt got no response.
  returned: always
  type: int
  sample: 200
attempts:
  description: Number of requests made.
  returned: always
  type: int
  sample: 4
successes_in_a_row:
  description: Healthy responses in a row at the end.
  returned: always
  type: int
  sample: 3
elapsed:
  description: Seconds spent polling.
  returned: always
  type: float
  sample: 3.02
json:
  description: The last response body parsed as JSON; V(null) if it was not JSON.
  returned: always
  type: raw
  sample: {status: ok, version: 2.0.0, database: ok}
body:
  description: The first 512 characters of the last response body.
  returned: always
  type: str
  sample: '{"status": "ok", "version": "2.0.0"}'
last_error:
  description:
    - The most recent reason an attempt was not healthy (an expectation with its observed value, or a
      connection error); V(null) if every attempt was healthy.
  returned: always
  type: str
  sample: "json field version was '1.0.0', expected '2.0.0'"
problems:
  description: Every expectation the last response broke; empty when it was healthy.
  returned: always
  type: list
  elements: str
  sample: ["status was 503, expected 200", "json field status was 'error', expected 'ok'"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.safedeploy.django.plugins.module_utils._http import (
    Expectations,
    PollSettings,
    UrlFetcher,
    failure_message,
    poll,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            method=dict(type="str", default="GET", choices=["GET", "HEAD", "POST", "OPTIONS"]),
            status_code=dict(type="list", elements="int", default=[200]),
            body_contains=dict(type="str"),
            body_regex=dict(type="str"),
            json=dict(type="dict"),
            headers=dict(type="dict"),
            validate_certs=dict(type="bool", default=True),
            ca_path=dict(type="path"),
            use_proxy=dict(type="bool", default=True),
            timeout=dict(type="float", default=5),
            interval=dict(type="float", default=1),
            deadline=dict(type="float", default=60),
            consecutive=dict(type="int", default=1),
        ),
        supports_check_mode=True,
    )
    params = module.params
    params["headers"] = params["headers"] or {}
    # Header values never leave the module, not even in the invocation shown with -v.
    invocation = {"module_args": dict(params, headers={k: "********" for k in params["headers"]})}

    def fail(msg: str, **extra) -> None:
        module.fail_json(msg=msg, url=params["url"], invocation=invocation, **extra)

    if not params["url"].lower().startswith(("http://", "https://")):
        fail(f"url {params['url']!r} must start with http:// or https://")
    for name in ("timeout", "deadline"):
        if params[name] <= 0:
            fail(f"{name} must be greater than 0, got {params[name]:g}")
    if params["interval"] < 0:
        fail(f"interval must be 0 or more, got {params['interval']:g}")
    if params["consecutive"] < 1:
        fail(f"consecutive must be 1 or more, got {params['consecutive']}")
    if not params["status_code"]:
        fail("status_code must list at least one status code")
    try:
        expect = Expectations.from_params(params)
    except ValueError as exc:
        fail(str(exc))

    settings = PollSettings(
        deadline=params["deadline"],
        interval=params["interval"],
        consecutive=params["consecutive"],
        timeout=params["timeout"],
    )
    fetch = UrlFetcher(
        params["url"],
        method=params["method"],
        headers=params["headers"],
        validate_certs=params["validate_certs"],
        ca_path=params["ca_path"],
        use_proxy=params["use_proxy"],
    )
    result = poll(fetch, expect, settings)
    result.update(changed=False, url=params["url"], invocation=invocation)
    if not result["healthy"]:
        module.fail_json(msg=failure_message(params["url"], result, settings), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
