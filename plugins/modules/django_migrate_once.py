#!/usr/bin/python
# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: django_migrate_once
short_description: Apply pending Django migrations exactly once, under a PostgreSQL advisory lock
version_added: 0.1.0
description:
  - Takes a session-level PostgreSQL advisory lock on a separate connection, so that two deploys (or two hosts
    of one deploy) never migrate the same database at once. The lock dies with the process, so a killed run
    never leaves it behind.
  - After taking the lock, confirms the target (host, port, database, user, system identifier against
    O(expected); refuses a replica), re-reads what is still pending, and applies it through Django's own
    C(migrate) command (signals such as C(post_migrate) included), recording how long each migration took.
  - Sets O(lock_timeout) and O(statement_timeout) on the migration's session first, so a DDL statement that
    waits behind the application's transactions gives up instead of blocking every query behind it.
  - Reports C(changed=false) when nothing is pending, which is what the runs that waited for another one see.
  - If a migration fails, the module fails and reports what was applied before it (RV(applied)), which one
    failed (RV(failed_migration)) and what was not attempted; a half-migrated database is never hidden.
author:
  - safedeploy.django maintainers (@safedeploy)
extends_documentation_fragment:
  - safedeploy.django.django_app
attributes:
  check_mode:
    support: full
    description:
      - Reports the migrations that would be applied (RV(would_apply)) and whether the lock is free now
        (RV(lock.free)); applies nothing and keeps no lock.
  diff_mode:
    support: none
    description:
      - Does not return a diff.
  idempotent:
    support: full
    description:
      - A second run finds nothing pending and reports C(changed=false).
options:
  lock_name:
    description:
      - Name of the advisory lock. The key is a signed 64-bit integer made from
        C(sha256(<database name> + <lock_name>)), so deploys of different databases do not wait for each other.
    type: str
    default: safedeploy.migrate
  lock_wait:
    description:
      - Seconds to wait for the lock. On timeout the module fails and names the session that holds it
        (pid, application_name, client address, session start).
    type: int
    default: 300
  lock_timeout:
    description:
      - PostgreSQL C(lock_timeout) for the migration's statements (how long one statement may wait for a table
        lock), for example V(10s), V(500ms); V(0) waits forever.
    type: str
    default: 10s
  statement_timeout:
    description:
      - PostgreSQL C(statement_timeout) for the migration's statements; V(0) means no limit.
    type: str
    default: "0"
  expected:
    description:
      - What the target database must be. Every key given must match the connected server, or nothing is applied.
    type: dict
    suboptions:
      host:
        description: Host the application connects to, as libpq reports it.
        type: str
      port:
        description: Server port.
        type: int
      database:
        description: Database name.
        type: str
      user:
        description: Role name.
        type: str
      system_identifier:
        description: The cluster's system identifier (C(SELECT system_identifier FROM pg_control_system())).
        type: str
  allow_replica:
    description:
      - Allow a target in recovery (C(pg_is_in_recovery())). Migrating a replica fails anyway; this exists for
        unusual setups only.
    type: bool
    default: false
seealso:
  - module: safedeploy.django.django_migration_plan
"""

EXAMPLES = r"""
- name: Migrate once, from one host, with a lock
  safedeploy.django.django_migrate_once:
    project_path: /srv/shop/releases/2.4.0
    virtualenv: /srv/shop/releases/2.4.0/venv
    app_environment: "{{ release_environment }}"
    lock_wait: 600
    lock_timeout: 5s
    expected:
      database: shop
      system_identifier: "7301234567890123456"
  run_once: true
  register: migrated

- name: Show how long each migration took
  ansible.builtin.debug:
    msg: "{{ item.id }}: {{ item.seconds }}s"
  loop: "{{ migrated.applied }}"
"""

RETURN = r"""
applied:
  description: Migrations applied by this run, in order, with their durations.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: V(app_label.migration_name).
      type: str
    seconds:
      description: Wall-clock duration of the migration.
      type: float
  sample: [{"id": "shop.0007_order_status", "seconds": 0.42}]
pending_before:
  description: What was pending once the lock was held (in check mode, what is pending now).
  returned: success
  type: list
  elements: str
would_apply:
  description: In check mode, the migrations a real run would apply.
  returned: check mode
  type: list
  elements: str
failed_migration:
  description:
    - The migration that failed and its error, or null.
    - Named so because Ansible itself owns the result key C(failed).
  returned: always
  type: dict
  contains:
    id:
      description: The failing migration.
      type: str
    atomic:
      description: Whether it was atomic (if not, its operations before the failing one stay applied).
      type: bool
    error:
      description: The error.
      type: str
not_attempted:
  description: Migrations still pending after a failure.
  returned: failure
  type: list
  elements: str
target:
  description: The database migrated (host, port, database, user, server_version, system_identifier,
    in_recovery). Never the password.
  returned: success
  type: dict
lock:
  description: The advisory lock.
  returned: success
  type: dict
  contains:
    key:
      description: The advisory lock key (signed 64-bit).
      type: int
    name:
      description: O(lock_name).
      type: str
    waited:
      description: Seconds spent waiting for the lock.
      type: float
    acquired:
      description: Whether this run held the lock.
      type: bool
    free:
      description: In check mode, whether the lock was free.
      type: bool
      returned: check mode
    holders:
      description:
        - Sessions holding the lock (C(pid), C(application_name), C(client_addr), C(backend_start), C(user),
          C(state)), in check mode when it is not free and on lock timeout.
      type: list
      elements: dict
      returned: when the lock is held by another session
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.safedeploy.django.plugins.module_utils import _django_runner


def main():
    argument_spec = dict(_django_runner.COMMON_ARGUMENT_SPEC)
    argument_spec.update(
        lock_name=dict(type="str", default="safedeploy.migrate"),
        lock_wait=dict(type="int", default=300),
        lock_timeout=dict(type="str", default="10s"),
        statement_timeout=dict(type="str", default="0"),
        expected=dict(
            type="dict",
            options=dict(
                host=dict(type="str"),
                port=dict(type="int"),
                database=dict(type="str"),
                user=dict(type="str"),
                system_identifier=dict(type="str"),
            ),
        ),
        allow_replica=dict(type="bool", default=False),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=_django_runner.COMMON_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    _django_runner.register_secrets(module)
    params = module.params
    if params["lock_wait"] < 0:
        module.fail_json(msg="lock_wait must be 0 or more seconds")

    payload = {
        "lock_name": params["lock_name"],
        "lock_wait": params["lock_wait"],
        "lock_timeout": params["lock_timeout"],
        "statement_timeout": params["statement_timeout"],
        "expected": {k: v for k, v in (params["expected"] or {}).items() if v is not None},
        "allow_replica": params["allow_replica"],
        "check_mode": module.check_mode,
    }
    reply = _django_runner.run_helper(module, params, "migrate", payload, passthrough=("migration_failed",))
    result = {
        "applied": [{"id": a["id"], "seconds": a["seconds"]} for a in reply.get("applied") or []],
        "pending_before": reply.get("pending_before") or [],
        # not "failed": Ansible owns that key (the task's failure flag)
        "failed_migration": reply.get("failed"),
        "target": reply.get("target") or {},
        "lock": reply.get("lock") or {},
    }
    if module.check_mode:
        result["would_apply"] = reply.get("would_apply") or []
    if not reply.get("ok"):
        result["not_attempted"] = reply.get("not_attempted") or []
        module.fail_json(
            msg=reply.get("message") or "a migration failed",
            changed=bool(result["applied"]),
            error_kind=reply.get("error_kind"),
            **result,
        )
    module.exit_json(changed=bool(reply.get("changed")), **result)


if __name__ == "__main__":
    main()
