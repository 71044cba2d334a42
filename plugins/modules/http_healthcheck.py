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
    C(json field version was '1.0.0', expected '2.0.0'), or the last connection or TLS error, with the number
    of attempts and the time spent.
  - With O(parallel), each attempt is that many requests sent at once, healthy only when all of them are. It is a
    way to give every worker process and thread of an application server its first requests (a warm-up)
    before it takes traffic, and to prove it answers them all.
  - With V(GET), V(HEAD) and V(OPTIONS) it only reads, so it runs in check mode too. It always reports
    C(changed=false); whether a V(POST) with a O(body) changes anything is up to the application, and in
    check mode a V(POST) is not sent.
  - Nothing secret is returned. Request header values are masked in the invocation, and the values of
    request headers other than C(Host), C(Accept), C(Content-Type), C(User-Agent), C(X-Forwarded-*) and
    the like are masked wherever they would appear in the result (if at least 4 characters long). The URL
    is returned without user name and password. The body excerpt, the parsed JSON, the response headers
    and the messages have obvious secrets masked (see RV(body_excerpt)).
author:
  - safedeploy.django maintainers (@safedeploy)
attributes:
  check_mode:
    support: partial
    description: Runs in check mode, with the limits given in the details.
    details:
      - V(GET), V(HEAD) and V(OPTIONS) only read, so in check mode they poll for real and report the same
        result.
      - A V(POST) is not sent in check mode, since it may change something; the task reports C(skipped).
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
      - URL to poll, C(http://) or C(https://), with a host name.
      - User name and password in the URL (C(https://user:pass@host/)) are used for HTTP basic authentication
        when the server asks for it, and are never returned.
    type: str
    required: true
  method:
    description:
      - HTTP method. Redirects are followed for V(GET) and V(HEAD) only.
      - V(HEAD) gets no body, so it cannot be combined with O(body_contains), O(body_regex) or O(json).
      - V(POST) is for endpoints made to be probed (a warm-up or self-test URL). The module always reports
        C(changed=false), and does not send a V(POST) in check mode.
    type: str
    default: GET
    choices: [GET, HEAD, POST, OPTIONS]
  body:
    description:
      - Request body, with O(method=POST) only.
      - A mapping or a list is sent as JSON. A string is sent as it is, unless O(body_format=json), which checks
        it is a JSON document first.
      - JSON is sent with the header C(Content-Type) set to C(application/json) unless O(headers) set a C(Content-Type).
      - Values of secret-looking keys are masked in the invocation; use C(no_log) on the task anyway if the body
        carries a secret.
    type: raw
  body_format:
    description:
      - How to send O(body). Defaults to V(json) for a mapping or list and V(raw) for a string.
    type: str
    choices: [json, raw]
  status_code:
    description:
      - Status codes that count as healthy, each from 100 to 599.
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
      - A regular expression that does not compile fails the task before any request, naming the error.
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
        C(X-Forwarded-Proto), or a token.
      - Header values are not returned by the module (they show as V(********) in the invocation); use
        C(no_log) on the task anyway if a header carries a secret, because Ansible may log task arguments.
      - For an C(https://) URL, a C(Host) header also sets the TLS server name (see O(server_name)).
    type: dict
  validate_certs:
    description:
      - Verify the server's TLS certificate and that it is valid for the server name. Set to V(false) only
        for self-signed test setups.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file with the certificate authorities to trust for HTTPS, instead of the system's.
      - Must exist on the target host.
    type: path
  client_cert:
    description:
      - PEM file with the client certificate to present to a server that requires one (mutual TLS).
      - It may also hold the private key; otherwise set O(client_key).
      - Must exist on the target host. A certificate or key that cannot be loaded fails the task before
        any request.
    type: path
  client_key:
    description:
      - PEM file with the private key of O(client_cert), unencrypted. Requires O(client_cert).
      - The key is only given to the TLS library; its content never reaches the output.
    type: path
  server_name:
    description:
      - Host name to send in the TLS handshake (SNI) and to verify the server certificate against, instead
        of the host in O(url). For reaching one name's certificate on a backend address, for example
        C(https://10.0.0.11/healthz) with V(shop.example.com).
      - Defaults to the host of a C(Host) header in O(headers) (without its port), else the host in O(url).
      - Applies to the connection to the host in O(url) only, not to a host a redirect leads to. Ignored for
        C(http://) URLs.
    type: str
  use_proxy:
    description:
      - Use the proxy from the E(https_proxy) / E(http_proxy) environment variables (E(no_proxy) is honoured).
    type: bool
    default: true
  timeout:
    description:
      - Seconds a single request may take, greater than 0. Later attempts are cut short so as not to run far
        past O(deadline) (but get at least 0.5 seconds).
    type: float
    default: 5
  interval:
    description:
      - Seconds to wait between attempts, greater than 0.
    type: float
    default: 1
  deadline:
    description:
      - Seconds after which the module gives up and fails, 0 or more. The first request is always made, so
        V(0) means a single attempt.
    type: float
    default: 60
  consecutive:
    description:
      - Number of healthy responses in a row required, 1 or more. An unhealthy response resets the count.
    type: int
    default: 1
  parallel:
    description:
      - Requests sent at once per attempt, each on its own connection, from 1 to 64. The attempt is healthy only
        when every response meets the expectations; otherwise the first unhealthy response is the one returned.
      - Set it to at least the server's concurrency (gunicorn workers x threads) to reach every worker.
      - O(consecutive) counts attempts, so O(parallel=8) with O(consecutive=3) sends at least 24 requests.
    type: int
    default: 1
  body_excerpt_size:
    description:
      - Number of bytes of the last response body returned in RV(body_excerpt), 0 or more.
    type: int
    default: 512
notes:
  - Uses C(ansible.module_utils.urls), like M(ansible.builtin.uri), for proxies, redirects and authentication
    from the URL. The TLS settings are the module's own (O(validate_certs), O(ca_path), O(client_cert),
    O(client_key), O(server_name)).
  - At most 1 MiB of each response body is read.
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

- name: Check a backend that requires a client certificate, by address, with the site's certificate name
  safedeploy.django.http_healthcheck:
    url: "https://{{ ansible_host }}:8443/healthz"
    server_name: shop.example.com
    ca_path: /etc/ssl/certs/internal-ca.pem
    client_cert: /etc/safedeploy/health-client.pem
    client_key: /etc/safedeploy/health-client.key
    body_contains: ready

- name: Warm up every gunicorn worker and thread with a self-test of the write path before it takes traffic
  safedeploy.django.http_healthcheck:
    url: "http://{{ ansible_host }}:8000/warmup"
    method: POST
    body:
      customer: warmup@example.com
      lines: {SKU-1: 1}
    status_code: [200]
    parallel: 8
    consecutive: 3
    interval: 0.2
    deadline: 30

- name: Report a host's health without failing the play
  safedeploy.django.http_healthcheck:
    url: "http://{{ ansible_host }}:8000/healthz"
    deadline: 0
  register: health
  failed_when: false

- name: Say why
  ansible.builtin.debug:
    msg: "{{ health.healthy }}: {{ health.last_error }} (HTTP {{ health.status }}) {{ health.body_excerpt }}"
"""

RETURN = r"""
healthy:
  description: Whether the expectations held O(consecutive) times in a row before the deadline.
  returned: always
  type: bool
  sample: true
url:
  description: The URL polled, without user name and password, with secret-looking query values masked.
  returned: always
  type: str
  sample: http://10.0.0.11:8000/healthz
status:
  description: HTTP status of the last response; V(null) when the last attempt got no response.
  returned: always
  type: int
  sample: 200
attempts:
  description: Number of attempts made (of O(parallel) requests each).
  returned: always
  type: int
  sample: 4
requests:
  description: Number of requests sent, O(parallel) per attempt.
  returned: always
  type: int
  sample: 4
successes:
  description: Number of healthy responses among all attempts.
  returned: always
  type: int
  sample: 3
successes_in_a_row:
  description: Healthy responses in a row at the end (the count compared with O(consecutive)).
  returned: always
  type: int
  sample: 3
elapsed:
  description: Seconds spent polling.
  returned: always
  type: float
  sample: 3.02
json:
  description:
    - The last response body parsed as JSON, with the values of secret-looking keys masked; V(null) if it
      was not JSON (or longer than the 1 MiB read).
  returned: always
  type: raw
  sample: {status: ok, version: 2.0.0, database: ok}
body_excerpt:
  description:
    - The first O(body_excerpt_size) bytes of the last response body, decoded (charset of the response,
      else UTF-8). A longer body is cut and ends with C(...[truncated, body is N bytes]).
    - >-
      Obvious secrets are masked as C(********) before the cut, so none shows even in part - values of
      keys named like C(password), C(secret), C(token), C(api_key), C(access_key), C(private_key),
      C(credential), C(authorization), C(cookie) (in JSON, C(key=value) and C(key: value) forms),
      C(Bearer) and C(Basic) credentials, and passwords in URLs.
  returned: always
  type: str
  sample: '{"status": "ok", "version": "2.0.0", "secret_key": "********"}'
headers:
  description:
    - Headers of the last response, by lower-case name (a repeated header joined with C(, )); empty when
      there was no response.
    - Every header is returned, but the values of C(Set-Cookie), C(Cookie), C(Authorization),
      C(Proxy-Authorization) and of headers named like a secret are masked, and obvious secrets in the
      others are masked as in RV(body_excerpt).
  returned: always
  type: dict
  sample: {content-type: application/json, x-release: 2.0.0, set-cookie: '********'}
last_error:
  description:
    - >-
      The most recent reason an attempt was not healthy (an expectation with its observed value, or a
      connection or TLS error, for example C(request failed: connection refused ...),
      C(request failed: timed out after 5s), C(status was 503, expected 200),
      C(json field version was '1.0.0', expected '2.0.0'),
      C(request failed: TLS certificate verification failed: ...)); V(null) if every attempt was healthy.
    - It can be from an earlier attempt when the last one was healthy; RV(problems) is about the last one.
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
    BODY_EXCERPT,
    BODY_FORMATS,
    METHODS,
    UrlFetcher,
    finish,
    poll,
    prepare,
    redact_data,
    redact_text,
    safe_url,
)
from ansible_collections.safedeploy.django.plugins.module_utils._secrets import MASK


def _shown_body(body):
    """The body as the invocation shows it: secret-looking values masked."""
    if body is None:
        return None
    if isinstance(body, str):
        return redact_text(body)
    return redact_data(body)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            method=dict(type="str", default="GET", choices=list(METHODS)),
            body=dict(type="raw"),
            body_format=dict(type="str", choices=list(BODY_FORMATS)),
            status_code=dict(type="list", elements="int", default=[200]),
            body_contains=dict(type="str"),
            body_regex=dict(type="str"),
            json=dict(type="dict"),
            headers=dict(type="dict"),
            validate_certs=dict(type="bool", default=True),
            ca_path=dict(type="path"),
            client_cert=dict(type="path"),
            client_key=dict(type="path"),
            server_name=dict(type="str"),
            use_proxy=dict(type="bool", default=True),
            timeout=dict(type="float", default=5),
            interval=dict(type="float", default=1),
            deadline=dict(type="float", default=60),
            consecutive=dict(type="int", default=1),
            parallel=dict(type="int", default=1),
            body_excerpt_size=dict(type="int", default=BODY_EXCERPT),
        ),
        required_by={"client_key": "client_cert"},
        supports_check_mode=True,
    )
    params = module.params
    shown_url = safe_url(params["url"])
    # Header values never leave the module, not even in the invocation shown with -v.
    invocation = {"module_args": dict(params, url=shown_url, body=_shown_body(params["body"]),
                                      headers={k: MASK for k in (params["headers"] or {})} or None)}

    try:
        check = prepare(params)
        fetch = UrlFetcher(check.url, method=check.method, headers=check.headers, tls=check.tls,
                           use_proxy=check.use_proxy, data=check.data)
    except ValueError as exc:
        module.fail_json(msg=str(exc), url=shown_url, healthy=False, invocation=invocation)
    else:
        # Ansible masks these too, in anything it prints about this task.
        module.no_log_values.update(check.secrets)
        if module.check_mode and check.method == "POST":
            module.exit_json(changed=False, skipped=True, url=check.safe_url, healthy=None, attempts=0, requests=0,
                             msg="check mode: a POST is not sent (it may change something)", invocation=invocation)
        result, msg = finish(poll(fetch, check.expect, check.settings), check)
        result.update(changed=False, invocation=invocation)
        if msg is not None:
            module.fail_json(msg=msg, **result)
        module.exit_json(**result)


if __name__ == "__main__":
    main()
