#!/usr/bin/python
# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: django_backfill
short_description: Backfill a large table in small, resumable batches, outside the deploy
version_added: 0.1.0
description:
  - The middle step of an expand / contract change (add a nullable column, deploy code that writes it, B(backfill
    the old rows), later enforce C(NOT NULL)). Fills a large table in batches of O(batch_size) rows, each in its own
    short transaction, with a pause between batches, so that the application's writes never wait longer than
    one batch.
  - Walks the table by its integer O(key) with keyset pagination (C(key > last ORDER BY key LIMIT batch_size), no
    C(OFFSET)), from the smallest key up to the largest key at the start of the backfill (RV(max_key)). Rows
    inserted later with a greater key are not visited; the deployed code is expected to fill them.
  - The work is either an SQL C(UPDATE <table> SET <set> WHERE <key> > last AND <key> <= upper AND (<where>)) per
    batch (O(set), O(where)), or a Django management command (O(command)) called once per key range with
    C(--start) and C(--end), in the application's interpreter.
  - Progress is kept in the table C(safedeploy_backfill) (created when missing, on the connection's search_path)
    under O(name). Each batch commits its work and its progress in the same transaction, so a run that is
    killed, times out or fails resumes exactly after the last committed batch; a batch that was rolled back is
    done again, which O(where) makes harmless.
  - Connects like the other Django modules of the collection (O(project_path), O(python), O(settings),
    O(app_environment)), to the application's C(DATABASES[database]), as the database user given there.
  - The module cannot print while it runs. Follow a run with O(progress_log), or run it in slices with
    O(max_runtime) in a loop that prints each slice's figures (the playbook C(safedeploy.django.backfill) does
    that; see C(docs/backfill.md)).
author:
  - safedeploy.django maintainers (@safedeploy)
extends_documentation_fragment:
  - safedeploy.django.django_app
attributes:
  check_mode:
    support: full
    description:
      - Counts the rows a real run would update (RV(would_update); in command mode the rows of the key range left)
        and refuses a changed definition as a real run would. Changes nothing, creates no state table, writes no
        O(progress_log).
  diff_mode:
    support: none
    description:
      - Does not return a diff.
  idempotent:
    support: full
    description:
      - A finished backfill reports C(changed=false) and does nothing, until O(restart=true).
options:
  name:
    description:
      - Names the backfill; its progress is stored under this name. Running the module again with the same name
        resumes it (or, once finished, does nothing).
      - One name is one piece of work; running it with another O(table), O(key), O(set), O(where), O(command)
        or O(command_args) fails (C(error_kind=definition_changed)) unless O(restart=true).
    type: str
    required: true
  table:
    description:
      - The table to backfill, for example V(shop_order), or V(schema.table). Letters, digits, C(_) and C($)
        only; quoted, so the case matters.
    type: str
    required: true
  key:
    description:
      - Its integer (C(smallint), C(integer), C(bigint)) key column, which must be indexed (the primary key).
    type: str
    default: id
  set:
    description:
      - SQL mode. The assignment list of the C(UPDATE), for example V(display_name = name).
      - A trusted SQL fragment written by the playbook author, inserted as it is (never from user input). A C(;) is
        refused. Requires O(where). Mutually exclusive with O(command).
    type: str
  where:
    description:
      - SQL mode. The condition of the rows that still need the backfill, for example V(display_name IS NULL).
        Required with O(set) so that running a batch again changes nothing.
      - A trusted SQL fragment, like O(set); a C(;) is refused.
    type: str
  command:
    description:
      - Command mode. A Django management command of the project, called once per key range (in the batch's
        transaction, on the O(database) alias) as C(<command> <command_args> --start N --end M); it must handle
        the rows with C(N <= key < M) (start inclusive, end exclusive), for example
        C(Model.objects.filter(pk__gte=start, pk__lt=end)).
      - The command must accept C(--start) and C(--end) (checked before the first batch), use the O(database)
        alias, and neither commit nor open connections of its own, so that its writes and the progress commit
        together; write it so that running a range again is harmless.
      - Mutually exclusive with O(set) and O(where).
    type: str
  command_args:
    description:
      - Arguments given to O(command) before C(--start) and C(--end).
    type: list
    elements: str
    default: []
  batch_size:
    description:
      - Rows of the table per batch (consecutive keys; in SQL mode those not matching O(where) are skipped). A
        batch holds the locks of the rows it updates until it commits, so smaller batches make shorter waits for the
        application.
    type: int
    default: 1000
  pause:
    description:
      - Seconds to sleep between two batches, leaving room to the application (and to replication).
    type: float
    default: 0.1
  statement_timeout:
    description:
      - PostgreSQL C(statement_timeout) of the batches' statements, for example V(5s), V(500ms); V(0) means no
        limit. A batch that exceeds it is rolled back and the module fails (C(error_kind=statement_timeout));
        lower O(batch_size) and run again.
    type: str
    default: 5s
  lock_timeout:
    description:
      - PostgreSQL C(lock_timeout) of the batches' statements, that is how long a batch waits for a row that another
        transaction has locked. A batch that gives up is rolled back and retried after a back-off (O(lock_retries),
        O(retry_delay)).
    type: str
    default: 1s
  lock_retries:
    description:
      - How many times in a row one batch is retried after giving up on O(lock_timeout); past it the module
        fails (C(error_kind=lock_timeout)). V(0) never retries.
    type: int
    default: 5
  retry_delay:
    description:
      - Base of the back-off before retry I(n) of a batch, in seconds, is C(min(30, retry_delay * 2**(n-1))) times a
        random factor between 0.5 and 1.
    type: float
    default: 0.5
  max_runtime:
    description:
      - Seconds after which the run stops cleanly, before its next batch (so it may overrun by one batch), with
        RV(status=paused); the next run resumes. Every run does at least one batch.
      - Without it the run goes on to the end, or until O(timeout) nearly expires (then it stops the same way,
        RV(stopped_by=timeout), with a warning).
      - Must be below O(timeout).
    type: float
  count_timeout:
    description:
      - Time allowed to count the rows left at the start of a run (and in check mode); past it RV(rows_left) is
        an estimate from the planner's statistics and the share of the key range left
        (RV(rows_left_method=estimate)).
      - Never more than a tenth of O(max_runtime) (at least half a second), so that counting a very large table
        does not take the run's time. V(0) counts without a limit.
    type: str
    default: 30s
  restart:
    description:
      - Start the backfill over from the first key, with the current definition and largest key, even if it is
        finished or was started with another definition.
    type: bool
    default: false
  progress_log:
    description:
      - Absolute path of a file, on the host the module runs on, to which a progress line is appended at the
        start, at most once a second while running, and at the end (C(tail -f) it). Missing parent directories
        are created with mode 0700, the file with mode 0600; a symlink is refused.
      - Not written in check mode.
    type: path
notes:
  - O(set) and O(where) are SQL, run with the privileges of the database user of the settings; they come from the
    playbook author, like a migration's C(RunSQL).
  - A second run of the same O(name) while one is running waits up to 30 seconds, then fails
    (C(error_kind=busy)) naming the other session. A killed run's session vanishes within seconds.
  - The batches use the O(database) alias's connection with O(statement_timeout) and O(lock_timeout) set on the
    session; on PostgreSQL 14 and later also C(client_connection_check_interval=1s), so that a batch whose runner
    was killed is rolled back within a second.
seealso:
  - module: safedeploy.django.django_migrate_once
"""

EXAMPLES = r"""
- name: Fill display_name of every user, 2000 rows a batch
  safedeploy.django.django_backfill:
    project_path: /srv/shop/current
    python: /srv/shop/current/venv/bin/python
    app_environment: "{{ release_environment }}"
    name: accounts-display-name
    table: accounts_user
    set: display_name = coalesce(first_name || ' ' || last_name, username)
    where: display_name IS NULL
    batch_size: 2000
    progress_log: /srv/shop/shared/backfill-accounts-display-name.log
  run_once: true
  register: backfill

- name: Say how it went
  ansible.builtin.debug:
    msg: >-
      {{ backfill.status }}: {{ backfill.rows_done }} rows this run ({{ backfill.rows_done_total }} in all),
      {{ backfill.rows_per_second }} rows/s, longest batch {{ backfill.longest_batch_seconds }}s

- name: Backfill with a management command, in slices of 30 seconds that print their progress
  safedeploy.django.django_backfill:
    project_path: /srv/shop/current
    python: /srv/shop/current/venv/bin/python
    app_environment: "{{ release_environment }}"
    name: orders-totals
    table: shop_order
    command: backfill_order_totals
    command_args: [--currency, EUR]
    max_runtime: 30
  register: slice
  loop: "{{ range(0, 1000) | list }}"
  loop_control:
    label: >-
      {{ slice.rows_done_total | default('-') }} rows done, ~{{ slice.rows_left | default('?') }} left,
      ETA {{ slice.eta_seconds | default('?') }}s
    break_when:
      - slice.status | default('failed') != 'paused'
  run_once: true

- name: How many rows would it touch?
  safedeploy.django.django_backfill:
    project_path: /srv/shop/current
    python: /srv/shop/current/venv/bin/python
    name: accounts-display-name
    table: accounts_user
    set: display_name = name
    where: display_name IS NULL
  check_mode: true
  register: sizing
"""

RETURN = r"""
name:
  description: O(name).
  returned: always
  type: str
  sample: accounts-display-name
status:
  description:
    - V(finished) (every key up to RV(max_key) done), V(paused) (stopped by O(max_runtime) or O(timeout); run again
      to resume), V(failed) (a batch failed; run again to resume after fixing the cause).
    - In check mode the stored status, or V(new) when the backfill never ran.
  returned: success, and when a batch failed
  type: str
  sample: paused
stopped_by:
  description: Why a paused run stopped, V(max_runtime) or V(timeout); null otherwise.
  returned: success
  type: str
rows_done:
  description:
    - Rows updated by this run. In SQL mode the C(UPDATE)s' row counts; in command mode the rows of the key ranges
      given to the command.
  returned: success, and when a batch failed
  type: int
  sample: 120000
rows_done_total:
  description: Rows done by every run since the backfill started (or restarted).
  returned: success, and when a batch failed
  type: int
  sample: 480000
rows_left:
  description:
    - Rows left after this run, from the count at its start (SQL mode, the rows beyond RV(last_key) matching
      O(where); command mode, the rows of the key range left) minus the rows done; null when unknown.
  returned: success, and when a batch failed
  type: int
  sample: 520000
rows_left_method:
  description: V(count), or V(estimate) when counting took longer than O(count_timeout).
  returned: success, and when a batch failed
  type: str
would_update:
  description: In check mode, the rows a real run would update (see RV(rows_left)).
  returned: check mode
  type: int
  sample: 1000000
would_restart:
  description: In check mode, whether O(restart) would throw away stored progress.
  returned: check mode
  type: bool
batches:
  description: Batches committed by this run.
  returned: success, and when a batch failed
  type: int
batches_total:
  description: Batches committed since the backfill started.
  returned: success, and when a batch failed
  type: int
retries:
  description: Batches of this run retried after giving up on O(lock_timeout).
  returned: success, and when a batch failed
  type: int
elapsed:
  description: Seconds this run took (pauses included).
  returned: success, and when a batch failed
  type: float
rows_per_second:
  description: RV(rows_done) / RV(elapsed).
  returned: success, and when a batch failed
  type: float
  sample: 8412.5
eta_seconds:
  description: RV(rows_left) / RV(rows_per_second); 0 when finished, null when unknown.
  returned: success, and when a batch failed
  type: float
longest_batch_seconds:
  description: Duration of this run's longest batch (its transaction), the longest a row was locked by it.
  returned: success, and when a batch failed
  type: float
last_key:
  description: The greatest key done (every row with a key up to it is done).
  returned: success, and when a batch failed
  type: int
max_key:
  description: The greatest key when the backfill started; the backfill ends there.
  returned: success, and when a batch failed
  type: int
runs:
  description: Runs of this backfill since it started.
  returned: success
  type: int
started_at:
  description: When the backfill (not this run) started, ISO 8601.
  returned: success, and when a batch failed
  type: str
finished_at:
  description: When it finished, ISO 8601; null until then.
  returned: success, and when a batch failed
  type: str
state_table:
  description: The table that keeps the progress.
  returned: always
  type: str
  sample: safedeploy_backfill
target:
  description: The database (host, port, database, user, server_version, system_identifier). Never the password.
  returned: when connected
  type: dict
error_kind:
  description:
    - Why the module failed, for example V(lock_timeout), V(statement_timeout), V(batch_failed),
      V(definition_changed), V(busy), V(bad_table), V(bad_key), V(bad_command), V(progress_log), V(db_unreachable).
  returned: failure
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.safedeploy.django.plugins.module_utils import _backfill, _backfill_helper, _django_runner
from ansible_collections.safedeploy.django.plugins.module_utils._audit import open_audit_log

# Failures after the run started: the reply carries the figures of what was done before.
PASSTHROUGH = ("lock_timeout", "statement_timeout", "batch_failed", "state_moved")
FIGURES = ("status", "rows_done", "rows_done_total", "rows_left", "rows_left_method", "batches", "batches_total",
           "retries", "elapsed", "rows_per_second", "eta_seconds", "longest_batch_seconds", "last_key", "max_key",
           "started_at", "finished_at")


def deadline(params: dict) -> tuple[float, str]:
    """When the run stops by itself: max_runtime, else a little before timeout kills it."""
    timeout = float(params["timeout"])
    grace = min(60.0, max(2.0, timeout * 0.1))
    if params["max_runtime"] is not None:
        return float(params["max_runtime"]), "max_runtime"
    return max(1.0, timeout - grace), "timeout"


def main():
    argument_spec = dict(_django_runner.COMMON_ARGUMENT_SPEC)
    argument_spec.update(
        name=dict(type="str", required=True),
        table=dict(type="str", required=True),
        key=dict(type="str", default="id", no_log=False),
        set=dict(type="str"),
        where=dict(type="str"),
        command=dict(type="str"),
        command_args=dict(type="list", elements="str", default=[]),
        batch_size=dict(type="int", default=1000),
        pause=dict(type="float", default=0.1),
        statement_timeout=dict(type="str", default="5s"),
        lock_timeout=dict(type="str", default="1s"),
        lock_retries=dict(type="int", default=5),
        retry_delay=dict(type="float", default=0.5),
        max_runtime=dict(type="float"),
        count_timeout=dict(type="str", default="30s"),
        restart=dict(type="bool", default=False),
        progress_log=dict(type="path"),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=_django_runner.COMMON_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    _django_runner.register_secrets(module)
    params = module.params
    base = {"name": params["name"], "state_table": _backfill.STATE_TABLE}

    errors = _backfill.validate(params)
    if params["progress_log"] and not os.path.isabs(params["progress_log"]):
        errors.append(f"progress_log must be an absolute path, not '{params['progress_log']}'")
    if errors:
        module.fail_json(msg="; ".join(errors), error_kind="arguments", **base)

    if params["progress_log"] and not module.check_mode:
        try:
            fd, warnings = open_audit_log(params["progress_log"])
            os.close(fd)
        except OSError as exc:
            module.fail_json(
                msg=f"cannot open progress_log {params['progress_log']} for appending: {exc.strerror or exc}. "
                "Nothing was done. Point it at a regular file (not a symlink) in a directory this user can write.",
                error_kind="progress_log", **base,
            )
        for warning in warnings:
            module.warn(warning.replace("audit_log", "progress_log"))

    stop_after, reason = deadline(params)
    # counting the rows left must not eat the run: at most a tenth of it (then the estimate is used)
    count_seconds = min(_backfill.duration_seconds(params["count_timeout"]) or 0.0, max(0.5, stop_after / 10))
    payload = {
        "name": params["name"],
        "definition": _backfill.definition(params),
        "batch_size": params["batch_size"],
        "pause": params["pause"],
        "statement_timeout": params["statement_timeout"],
        "lock_timeout": params["lock_timeout"],
        "lock_retries": params["lock_retries"],
        "retry_delay": params["retry_delay"],
        "count_timeout": f"{int(count_seconds * 1000)}ms" if count_seconds else "0",
        "deadline": stop_after,
        "deadline_reason": reason,
        "restart": params["restart"],
        "check_mode": module.check_mode,
        "progress_log": None if module.check_mode else params["progress_log"],
    }

    try:
        reply = _backfill_helper.run(module.params, payload, which=module.get_bin_path)
        if not reply.get("ok") and reply.get("error_kind") not in PASSTHROUGH:
            raise _django_runner.failure_from_reply(reply)
    except _django_runner.HelperFailure as failure:
        passed_on = ("stderr", "rc", "connection", "target", "traceback", "interpreter", "settings")
        details = {k: v for k, v in failure.details.items() if k in passed_on}
        module.fail_json(msg=failure.message, error_kind=failure.kind, **base, **details)

    result = dict(base)
    result.update({k: reply.get(k) for k in FIGURES})
    result["target"] = reply.get("target") or {}
    if reply.get("ok"):
        result["runs"] = reply.get("runs")
        result["stopped_by"] = reply.get("stopped_by")
    if module.check_mode:
        result["would_update"] = reply.get("would_update")
        result["would_restart"] = bool(reply.get("would_restart"))
    if not reply.get("ok"):
        module.fail_json(msg=reply.get("message") or "a batch failed", changed=bool(reply.get("changed")),
                         error_kind=reply.get("error_kind"), **result)
    if reply.get("stopped_by") == "timeout":
        module.warn(
            f"backfill {params['name']} stopped before timeout ({params['timeout']}s) would have killed it, with "
            f"{result['rows_left']} rows left: run it again to resume, and set max_runtime (or a larger timeout)."
        )
    module.exit_json(changed=bool(reply.get("changed")), **result)


if __name__ == "__main__":
    main()
