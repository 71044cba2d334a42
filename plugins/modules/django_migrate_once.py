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
    waits behind the application's transactions gives up instead of blocking every query behind it. When
    a statement gives up on O(lock_timeout), the migration was rolled back (or, if not atomic, stopped) and is
    run again after a back-off, up to O(retries) times, still under the same advisory lock.
  - While migrating, a second session watches C(pg_blocking_pids()) of the migrating session and names every
    session that blocked it (RV(blockers)). On PostgreSQL 14 and later the migrating session also sets
    C(client_connection_check_interval=1s), so a runner killed mid-statement is noticed and rolled back within
    a second.
  - Before each attempt, drops (C(DROP INDEX CONCURRENTLY)) the INVALID indexes that an earlier failed
    C(CREATE INDEX CONCURRENTLY) of a still-pending non-atomic migration left behind, so that its rerun is
    clean.
  - Applies the migrations of one deploy phase (O(phase), O(post_migrations)), refuses a plan other than
    the approved one (O(expected_plan_digest)), verifies the result under the lock (nothing pending for the
    phase, no INVALID index, O(checks) hold) and appends an audit record to O(audit_log).
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
      - Reports the migrations that would be applied for the phase (RV(would_apply)), the plan digest, and
        whether the lock is free now (RV(lock.free)); applies nothing, keeps no lock, runs no check and writes
        no audit record.
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
      - When it fires the migration is retried (O(retries)); if it still fails, the message names the blocking
        sessions. End or shorten those transactions, or raise O(lock_timeout) or O(retries).
    type: str
    default: 10s
  statement_timeout:
    description:
      - PostgreSQL C(statement_timeout) for the migration's statements; V(0) means no limit.
      - A statement cancelled by it is not retried. Raise it, or make the migration cheaper.
    type: str
    default: "0"
  retries:
    description:
      - How many times to run migrate again after a statement gave up on O(lock_timeout) (SQLSTATE 55P03).
        V(0) never retries. Other errors, C(statement_timeout) included, are never retried.
      - Django plans again from what is applied, so the migrations applied before the failure are not re-run.
        A non-atomic migration runs again from its first operation; write its operations so that they can.
    type: int
    default: 3
  retry_delay:
    description:
      - Base of the back-off before retry I(n), in seconds; the wait is
        C(min(30, retry_delay * 2**(n-1))) times a random factor between 0.5 and 1.
    type: float
    default: 2.0
  phase:
    description:
      - Which migrations to apply.
      - V(all) and V(post) apply everything pending. V(post) is the run after every host serves the new
        code (contract).
      - V(pre) applies the pending migrations of phase pre that do not depend, through pending migrations, on a
        pending post migration. Those that do are returned in RV(deferred); mark them post too, or make the
        post migration come after them.
      - A migration is in phase post when its C(Migration) class sets C(safedeploy_phase = "post") or its id is in
        O(post_migrations); otherwise in phase pre. Any other C(safedeploy_phase) value fails the module.
    type: str
    choices: [all, pre, post]
    default: all
  post_migrations:
    description:
      - Ids (V(app_label.migration_name)) of migrations that belong to phase post, besides those marked with
        C(safedeploy_phase = "post"). Every id must name a migration of the project, else the module fails.
    type: list
    elements: str
    default: []
  checks:
    description:
      - Queries run after migrating, still under the lock, each in a READ ONLY transaction bounded by
        O(check_timeout). The first column of the first row (null without a row) must equal C(expect), as text
        or as a number.
      - A failing check fails the module (C(error_kind=verification_failed)); the migrations it applied stay
        applied and are reported. Fix the data or the check, then run again.
      - Not run in check mode (reported as V(skipped)).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Name of the check, unique, used in messages.
        type: str
        required: true
      sql:
        description: One SQL query (read-only).
        type: str
        required: true
      expect:
        description: The expected value of the first column of the first row (null for no row).
        type: raw
        required: true
  check_timeout:
    description:
      - C(statement_timeout) (and C(lock_timeout)) of each query of O(checks), in seconds. A check that runs
        longer counts as an error; make it cheaper or raise this.
    type: float
    default: 30.0
  expected_plan_digest:
    description:
      - The RV(plan_digest) of the approved plan (from M(safedeploy.django.django_migration_plan), or a check
        mode run of this module with the same O(phase)). Compared under the lock, before any change; if the
        pending plan differs (other migrations, or other file contents) the module fails with
        C(error_kind=plan_changed) and applies nothing. Re-run the plan, review it and pass its new digest.
      - For O(phase=pre) pass the digest of the pre selection (the planner's C(plan_digests.pre)), not the digest of
        the whole plan.
    type: str
  audit_log:
    description:
      - Absolute path of a file to which one JSON line is appended per run (also when the run fails), on the host
        the module runs on. Missing parent directories are created with mode 0700, the file with mode 0600; the
        permissions of an existing file are never loosened (a warning says when others may read it). A symlink
        is refused.
      - Opened before anything changes; if it cannot be opened the module fails and migrates nothing. Fix the
        path or its permissions.
      - Not written in check mode.
    type: path
  audit_context:
    description:
      - Free-form facts stored in the audit record (for example C(controller_user), C(awx_job_id),
        C(awx_job_template), C(release)). Secret values known to the module are masked.
    type: dict
    default: {}
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
  target_migration:
    description:
      - Unapply down to this migration instead of applying, like C(manage.py migrate app_label name) below the
        applied state, under the same advisory lock, with the same O(lock_timeout), retries, verification
        (nothing of the backwards plan left) and audit record.
      - Refused before any change (C(error_kind=irreversible)) when a migration of the backwards plan has an
        operation without a reverse (RunPython without reverse_code, RunSQL without reverse_sql, ...), and
        (C(error_kind=bad_target)) when the target is not applied, so migrating to it would apply migrations.
      - Plan it first with M(safedeploy.django.django_migration_plan) and the same O(target_migration), which
        says whether unapplying drops data. Requires O(phase=all).
    type: dict
    suboptions:
      app_label:
        description: The app.
        type: str
        required: true
      name:
        description:
          - A migration name or a unique prefix of it (V(0003)); V(zero) unapplies every migration of the app.
        type: str
        required: true
  allow_replica:
    description:
      - Allow a target in recovery (C(pg_is_in_recovery())). Migrating a replica fails anyway; this exists for
        unusual setups only.
    type: bool
    default: false
notes:
  - The plan digest is the sha256 of one line per pending migration of the phase, in migrate's order,
    C(app_label.name), a tab and the sha256 of the migration's file (or V(nofile)).
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

- name: Expand before the rollout, the approved plan only, with retries, checks and an audit record
  safedeploy.django.django_migrate_once:
    project_path: /srv/shop/releases/2.4.0
    virtualenv: /srv/shop/releases/2.4.0/venv
    app_environment: "{{ release_environment }}"
    phase: pre
    post_migrations:
      - shop.0031_remove_order_legacy_status
    expected_plan_digest: "{{ plan.plan_digests.pre }}"
    lock_timeout: 2s
    retries: 5
    retry_delay: 1.5
    checks:
      - name: every order has a status
        sql: SELECT count(*) FROM shop_order WHERE status IS NULL
        expect: 0
    audit_log: /var/log/safedeploy/migrations.log
    audit_context:
      controller_user: "{{ lookup('ansible.builtin.env', 'USER') }}"
      awx_job_id: "{{ awx_job_id | default('') }}"
      release: 2.4.0
  run_once: true
  register: expanded

- name: Contract once every host runs the new code
  safedeploy.django.django_migrate_once:
    project_path: /srv/shop/releases/2.4.0
    virtualenv: /srv/shop/releases/2.4.0/venv
    app_environment: "{{ release_environment }}"
    phase: post
    post_migrations:
      - shop.0031_remove_order_legacy_status
    audit_log: /var/log/safedeploy/migrations.log
  run_once: true
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
unapplied:
  description: With O(target_migration), the migrations unapplied by this run, in order, with their durations.
  returned: with target_migration
  type: list
  elements: dict
  sample: [{"id": "shop.0008_remove_product_description", "seconds": 0.05}]
would_unapply:
  description: With O(target_migration) in check mode, the migrations a real run would unapply.
  returned: check mode with target_migration
  type: list
  elements: str
migration_target:
  description: The resolved O(target_migration) (C(app_label), C(name); C(name) null for V(zero)).
  returned: with target_migration
  type: dict
applied_before:
  description:
    - The migrations recorded as applied (C(django_migrations)) once the lock was held, before this run changed
      anything (in check mode, now), as sorted V(app_label.migration_name) ids. What a rollback goes back to.
  returned: success
  type: list
  elements: str
last_applied:
  description:
    - Per app, its last applied migration (in migrate's order) once the lock was held (in check mode, now), that
      is the O(target_migration) that goes back to this state. Apps without an applied migration are absent.
  returned: success
  type: dict
  sample: {"shop": "0007_backfill_descriptions", "auth": "0012_alter_user_first_name_max_length"}
pending_before:
  description: Everything pending once the lock was held, whatever the phase (in check mode, what is pending now).
  returned: success
  type: list
  elements: str
would_apply:
  description: In check mode, the migrations a real run would apply (for the phase).
  returned: check mode
  type: list
  elements: str
phase:
  description: O(phase).
  returned: success
  type: str
  sample: pre
deferred:
  description:
    - With O(phase=pre), the pending pre migrations held back because they depend on a pending post migration,
      and why.
  returned: success
  type: list
  elements: dict
  contains:
    id:
      description: The deferred migration.
      type: str
    reason:
      description: The post migration it waits for (and the migrations in between).
      type: str
  sample:
    - id: shop.0032_order_note
      reason: "depends on the post-deploy migration shop.0031_remove_x: it runs in phase post"
post_pending:
  description: With O(phase=pre), the pending migrations of phase post (left for the post phase).
  returned: success
  type: list
  elements: str
plan_digest:
  description:
    - sha256 of the pending plan of the phase, computed under the lock (see the notes); what
      O(expected_plan_digest) is compared with.
  returned: success
  type: str
  sample: 3f9a0c2e5b7d4e1f8a6b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f
attempts:
  description: Every run of migrate in this module run (more than one after retries).
  returned: success
  type: list
  elements: dict
  contains:
    attempt:
      description: Attempt number, from 1.
      type: int
    applied:
      description: Ids applied by this attempt.
      type: list
      elements: str
    failed:
      description: The migration that failed in this attempt (C(id), C(atomic), C(error), C(sqlstate)), or null.
      type: dict
    invalid_indexes_dropped:
      description: INVALID indexes left by an earlier failed CONCURRENTLY build, dropped before this attempt.
      type: list
      elements: str
    blockers:
      description: Pids of the sessions seen blocking the migration during this attempt (see RV(blockers)).
      type: list
      elements: int
    seconds:
      description: Duration of the attempt.
      type: float
    backoff_seconds:
      description: The wait before the next attempt, or null.
      type: float
retries_used:
  description: How many retries were needed (attempts minus one).
  returned: success
  type: int
blockers:
  description:
    - The sessions that blocked the migrating session (C(pg_blocking_pids())), each once, as first seen.
    - Their query text is cut to 200 characters with secrets and PASSWORD literals masked.
  returned: success
  type: list
  elements: dict
  contains:
    pid:
      description: Backend pid.
      type: int
    application_name:
      description: Its application_name.
      type: str
    user:
      description: Its role.
      type: str
    client_addr:
      description: Its client address (null for a local socket).
      type: str
    state:
      description: Its state (for example C(idle in transaction)).
      type: str
    xact_age_seconds:
      description: How long its transaction had been open (the largest value seen).
      type: float
    query:
      description: Its current or last query, whitespace collapsed, at most 200 characters.
      type: str
    wait_event_type:
      description: What it was waiting for, if anything.
      type: str
    wait_event:
      description: What it was waiting for, if anything.
      type: str
    seen_at:
      description: The attempt during which it was first seen.
      type: int
verification:
  description:
    - What was checked after migrating, under the lock. If C(ok) is false the module fails with
      C(error_kind=verification_failed). In check mode C(ok) and C(pending_after) are null and checks are skipped.
  returned: success
  type: dict
  contains:
    ok:
      description: Nothing pending for the phase, no INVALID index, every check passed.
      type: bool
    pending_after:
      description: What is still pending for the phase.
      type: list
      elements: str
    invalid_indexes:
      description: INVALID indexes in the current schemas (a failed C(CREATE INDEX CONCURRENTLY) leaves one).
      type: list
      elements: str
    checks:
      description:
        - One result per O(checks) entry, C(name), C(sql), C(expect), C(got), C(status) (V(pass), V(fail),
          V(error) or V(skipped)), C(seconds), C(message).
      type: list
      elements: dict
audit:
  description:
    - The audit record of this run (also written to O(audit_log) unless in check mode). C(time), C(host),
      C(remote_user), C(context), C(target), C(lock) (C(name), C(waited)), C(phase), C(plan_digest),
      C(pending_before), C(applied), C(attempts), C(retries_used), C(blockers), C(verification) (a summary),
      C(outcome) (V(applied), V(unapplied), V(nothing_to_do), V(failed), V(verification_failed), V(refused),
      V(check_mode)) and C(error); with O(target_migration) also C(target_migration) and C(unapplied).
  returned: always
  type: dict
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
    sqlstate:
      description:
        - The SQLSTATE of the error, if it came from PostgreSQL (55P03 is lock_timeout, 57014 statement_timeout).
      type: str
not_attempted:
  description: Migrations of the phase still pending after a failure.
  returned: failure
  type: list
  elements: str
error_kind:
  description:
    - Why the module failed, for example V(migration_failed), V(verification_failed), V(plan_changed),
      V(lock_timeout), V(target_mismatch), V(bad_phase), V(audit_log), V(irreversible) and V(bad_target)
      (O(target_migration)).
  returned: failure
  type: str
expected_plan_digest:
  description: With C(error_kind=plan_changed), the digest that was expected (RV(plan_digest) is the one found).
  returned: failure
  type: str
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

import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.safedeploy.django.plugins.module_utils import _django_runner
from ansible_collections.safedeploy.django.plugins.module_utils._audit import (
    append_audit,
    audit_record,
    open_audit_log,
)

# Helper replies that carry what was applied before the failure: the module reports them itself.
PASSTHROUGH = ("migration_failed", "verification_failed")
DETAIL_KEYS = ("stderr", "rc", "connection", "target", "lock", "traceback", "interpreter", "settings",
               "plan_digest", "expected_plan_digest", "pending_before", "phase", "migration", "migration_target",
               "irreversible")
_MIGRATION_ID = re.compile(r"^[\w]+\.[\w]+$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def validate(module) -> None:
    params = module.params
    if params["lock_wait"] < 0:
        module.fail_json(msg="lock_wait must be 0 or more seconds")
    if params["retries"] < 0:
        module.fail_json(msg="retries must be 0 (no retry) or more")
    if params["retry_delay"] < 0:
        module.fail_json(msg="retry_delay must be 0 or more seconds, e.g. 2")
    if params["check_timeout"] <= 0:
        module.fail_json(msg="check_timeout must be a number of seconds above 0, e.g. 30")
    bad = [m for m in params["post_migrations"] if not _MIGRATION_ID.match(m)]
    if bad:
        module.fail_json(
            msg=f"post_migrations: {', '.join(repr(m) for m in bad)} is not app_label.migration_name "
            "(e.g. shop.0007_remove_order_legacy)"
        )
    names = [c["name"] for c in params["checks"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        module.fail_json(msg=f"checks: each check needs its own name; repeated: {', '.join(duplicates)}")
    digest = params["expected_plan_digest"]
    if digest is not None and not _DIGEST.match(digest.strip().lower()):
        module.fail_json(
            msg="expected_plan_digest must be the plan_digest (64 hexadecimal characters) that "
            "django_migration_plan reported for the approved plan"
        )
    if params["target_migration"] and params["phase"] != "all":
        module.fail_json(
            msg=f"target_migration unapplies down to a migration, whatever its phase: leave phase at all "
            f"(got phase={params['phase']})"
        )
    if params["audit_log"] and not os.path.isabs(params["audit_log"]):
        module.fail_json(msg=f"audit_log must be an absolute path, not '{params['audit_log']}'")


# -- main ------------------------------------------------------------------------------------


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
        target_migration=dict(
            type="dict",
            options=dict(
                app_label=dict(type="str", required=True),
                name=dict(type="str", required=True),
            ),
        ),
        retries=dict(type="int", default=3),
        retry_delay=dict(type="float", default=2.0),
        phase=dict(type="str", default="all", choices=["all", "pre", "post"]),
        post_migrations=dict(type="list", elements="str", default=[]),
        checks=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                name=dict(type="str", required=True),
                sql=dict(type="str", required=True),
                expect=dict(type="raw", required=True),
            ),
        ),
        check_timeout=dict(type="float", default=30.0),
        expected_plan_digest=dict(type="str"),
        audit_log=dict(type="path"),
        audit_context=dict(type="dict", default={}),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=_django_runner.COMMON_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    secrets = _django_runner.register_secrets(module)
    params = module.params
    validate(module)

    audit_fd = None
    if params["audit_log"] and not module.check_mode:
        try:
            audit_fd, warnings = open_audit_log(params["audit_log"])
        except OSError as exc:
            module.fail_json(
                msg=f"cannot open audit_log {params['audit_log']} for appending: {exc.strerror or exc}. Nothing was "
                "migrated. Point audit_log at a regular file (not a symlink) in a directory this user can write.",
                error_kind="audit_log",
            )
        for warning in warnings:
            module.warn(warning)

    payload = {
        "lock_name": params["lock_name"],
        "lock_wait": params["lock_wait"],
        "lock_timeout": params["lock_timeout"],
        "statement_timeout": params["statement_timeout"],
        "expected": {k: v for k, v in (params["expected"] or {}).items() if v is not None},
        "allow_replica": params["allow_replica"],
        "check_mode": module.check_mode,
        "retries": params["retries"],
        "retry_delay": params["retry_delay"],
        "phase": params["phase"],
        "post_migrations": params["post_migrations"],
        "checks": [{"name": c["name"], "sql": c["sql"], "expect": c["expect"]} for c in params["checks"]],
        "check_timeout": params["check_timeout"],
        "expected_plan_digest": (params["expected_plan_digest"] or "").strip().lower() or None,
        "target": params["target_migration"],
    }

    reply, failure = None, None
    try:
        reply = _django_runner.invoke_helper(params, "migrate", payload, which=module.get_bin_path)
        if not reply.get("ok") and reply.get("error_kind") not in PASSTHROUGH:
            failure = _django_runner.failure_from_reply(reply)
    except _django_runner.HelperFailure as exc:
        failure = exc

    kind = failure.kind if failure else (None if reply.get("ok") else reply.get("error_kind"))
    error = failure.message if failure else (None if reply.get("ok") else reply.get("message"))
    source = dict(failure.details) if failure else reply
    record = audit_record(params, module.check_mode, source, kind, error, secrets)
    if params["target_migration"]:  # a backwards run: say what it unapplied
        record["target_migration"] = source.get("migration_target") or params["target_migration"]
        record["unapplied"] = [{"id": a.get("id"), "seconds": a.get("seconds")} for a in source.get("unapplied") or []]
        if kind is None and record["unapplied"] and not module.check_mode:
            record["outcome"] = "unapplied"
        elif kind in ("irreversible", "bad_target"):
            record["outcome"] = "refused"
    if audit_fd is not None:
        try:
            append_audit(audit_fd, record)
        except OSError as exc:
            module.warn(f"could not write the audit record to {params['audit_log']}: {exc.strerror or exc}")
        finally:
            os.close(audit_fd)

    if failure is not None:
        details = {k: v for k, v in failure.details.items() if k in DETAIL_KEYS}
        module.fail_json(msg=failure.message, error_kind=failure.kind, audit=record, **details)

    result = {
        "applied": [{"id": a["id"], "seconds": a["seconds"]} for a in reply.get("applied") or []],
        "pending_before": reply.get("pending_before") or [],
        # not "failed": Ansible owns that key (the task's failure flag)
        "failed_migration": reply.get("failed"),
        "target": reply.get("target") or {},
        "lock": reply.get("lock") or {},
        "phase": reply.get("phase") or params["phase"],
        "deferred": reply.get("deferred") or [],
        "post_pending": reply.get("post_pending") or [],
        "plan_digest": reply.get("plan_digest"),
        "attempts": reply.get("attempts") or [],
        "retries_used": reply.get("retries_used") or 0,
        "blockers": reply.get("blockers") or [],
        "verification": reply.get("verification"),
        "audit": record,
        "applied_before": reply.get("applied_before") or [],
        "last_applied": reply.get("last_applied") or {},
    }
    if params["target_migration"]:
        result["migration_target"] = reply.get("migration_target")
        result["unapplied"] = [{"id": a["id"], "seconds": a["seconds"]} for a in reply.get("unapplied") or []]
        if module.check_mode:
            result["would_unapply"] = reply.get("would_unapply") or []
    if module.check_mode:
        result["would_apply"] = reply.get("would_apply") or []
    if not reply.get("ok"):
        result["not_attempted"] = reply.get("not_attempted") or []
        module.fail_json(
            msg=reply.get("message") or "a migration failed",
            changed=bool(reply.get("changed") or result["applied"]),
            error_kind=reply.get("error_kind"),
            **result,
        )
    module.exit_json(changed=bool(reply.get("changed")), **result)


if __name__ == "__main__":
    main()
