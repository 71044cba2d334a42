#!/usr/bin/python
# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: django_migration_plan
short_description: Classify the pending Django migrations by risk and gate them
version_added: 0.1.0
description:
  - Loads the migration graph of a Django project once, in the application's own interpreter, and walks the
    same plan as C(manage.py migrate --plan) against the live PostgreSQL database.
  - Collects the SQL of every operation the way C(manage.py sqlmigrate) does, in one forward pass over the
    plan. An operation whose SQL cannot be written without the live schema (Django introspects existing
    constraints or indexes) is reported with RV(plan[].operations[].sql_error) and graded from the operation
    itself; the walk never stops on it.
  - Judges every operation with the rules of the collection (see C(docs/rules.md)), at the Django level
    (RunPython without reverse, RemoveField, NOT NULL without a database default, ...) and at the PostgreSQL
    level (blocking index build, table rewrite, validating constraint, ...). Size-sensitive rules are graded
    by the real size of each touched table.
  - Reports models changed without a migration (like C(makemigrations --check)) and fails on them unless
    O(fail_on_missing=false).
  - Applies a gate. A verdict riskier than O(max_risk) blocks unless a valid waiver covers it.
  - Changes nothing, ever.
author:
  - safedeploy.django maintainers (@safedeploy)
extends_documentation_fragment:
  - safedeploy.django.django_app
attributes:
  check_mode:
    support: full
    description:
      - Read-only; runs in check mode exactly as without it.
  diff_mode:
    support: none
    description:
      - Does not return a diff.
  idempotent:
    support: full
    description:
      - Never changes anything; always returns C(changed=false).
options:
  check_missing:
    description:
      - Look for model changes that have no migration yet (what C(makemigrations --check) would create).
    type: bool
    default: true
  fail_on_missing:
    description:
      - Fail when O(check_missing) finds model changes without a migration.
    type: bool
    default: true
  max_risk:
    description:
      - The highest risk the gate lets through. With the default V(medium), a V(high) verdict blocks.
    type: str
    choices: [low, medium, high]
    default: medium
  waivers:
    description:
      - Accepted risks. A waiver lets one rule of one migration through the gate until it expires.
      - A waiver counts only when it has all of O(waivers[].migration), O(waivers[].rule),
        O(waivers[].reason), O(waivers[].approved_by) and a valid O(waivers[].expires). An expired or incomplete
        waiver does not count; it is listed in RV(gate.expired_waivers) or RV(gate.invalid_waivers) (with what
        is wrong) and the report says so.
    type: list
    elements: dict
    default: []
    suboptions:
      migration:
        description: The migration, as V(app_label.migration_name).
        type: str
      rule:
        description: The rule id the waiver accepts (see C(docs/rules.md)).
        type: str
      reason:
        description: Why the risk is accepted; shown in the report.
        type: str
      approved_by:
        description: Who accepted the risk (a person or a change ticket); shown in the report.
        type: str
      expires:
        description: Last day the waiver applies, V(YYYY-MM-DD) (UTC).
        type: str
  thresholds:
    description:
      - What makes a table tiny, large or busy for the size-sensitive rules (index builds, rewrites, validating
        scans, data changes). Sizes are read from C(pg_class) and C(pg_stat_user_tables) of the live database.
    type: dict
    default: {}
    suboptions:
      large_table_rows:
        description: From this many (estimated) rows a size-sensitive verdict is V(high).
        type: int
        default: 1000000
      large_table_bytes:
        description: From this total size (table, indexes and TOAST) a size-sensitive verdict is V(high).
        type: int
        default: 1073741824
      tiny_table_rows:
        description:
          - Up to this many rows a size-sensitive verdict is V(low).
          - Must be below O(thresholds.large_table_rows).
        type: int
        default: 10000
      busy_table_writes_per_second:
        description:
          - A table that is not tiny and is written at least this often per second makes a size-sensitive
            verdict V(high). V(0) disables it (the default).
          - The rate is the average of C(n_tup_ins + n_tup_upd + n_tup_del) since the statistics were last
            reset, so it reads high on a freshly loaded database.
        type: float
        default: 0
  target_migration:
    description:
      - Plan towards this migration instead of the latest one, like C(manage.py migrate app_label name).
      - Below the applied state this is a backwards plan. RV(direction=backwards) and every migration to unapply
        is judged by the C(rollback) rules (can it be reversed, does reversing drop data).
    type: dict
    suboptions:
      app_label:
        description: The app.
        type: str
        required: true
      name:
        description:
          - A migration name or a unique prefix of it (V(0003)).
          - V(zero) unapplies every migration of the app.
        type: str
        required: true
  post_migrations:
    description:
      - Migrations (V(app_label.migration_name)) that run in the post-deploy (contract) phase, after every host
        runs the new code, besides those whose Migration class sets C(safedeploy_phase = "post").
      - A post-deploy migration is graded without the old code, for example dropping a column no code reads
        any more is V(medium) (data removal) instead of V(high). RV(plan[].phase) says each migration's phase.
    type: list
    elements: str
    default: []
  prechecks:
    description:
      - Run read-only data checks against the live tables for the migrations that can fail on existing data.
        These checks are NULLs before NOT NULL, duplicates before a unique constraint and orphan rows before a
        foreign key. A failing check is a V(will-fail-*) verdict.
      - Each check is one query bounded by O(precheck_timeout). No row value is ever returned, only counts.
    type: bool
    default: false
  precheck_timeout:
    description: Statement timeout of each data pre-check, in seconds. A check that times out is reported as V(timeout).
    type: float
    default: 5.0
  fail_on_block:
    description:
      - Fail when the gate blocks. With V(false), return RV(gate.blocked=true) and let the play decide.
    type: bool
    default: true
seealso:
  - module: safedeploy.django.django_migrate_once
"""

EXAMPLES = r"""
- name: Plan the migrations of the new release against the live database
  safedeploy.django.django_migration_plan:
    project_path: /srv/shop/releases/2.4.0
    virtualenv: /srv/shop/releases/2.4.0/venv
    app_environment:
      PGHOST: db.internal
      PGDATABASE: shop
      PGUSER: shop_app
      PGPASSWORD: "{{ vault_shop_db_password }}"
    max_risk: medium
    waivers:
      - migration: shop.0007_order_status_not_null
        rule: not-null-django-default
        reason: orders are written only by the new worker, deployed first (TICKET-123)
        approved_by: dba-oncall (Jane Doe)
        expires: "2030-01-31"
    thresholds:
      large_table_rows: 5000000
  register: plan

- name: Which migrations would a rollback to shop.0005 unapply, and can it be done?
  safedeploy.django.django_migration_plan:
    project_path: /srv/shop/current
    virtualenv: /srv/shop/current/venv
    target_migration:
      app_label: shop
      name: "0005"
    fail_on_block: false
  register: rollback_plan

- name: Check the data before the deploy (duplicates, NULLs, orphans)
  safedeploy.django.django_migration_plan:
    project_path: /srv/shop/releases/2.4.0
    virtualenv: /srv/shop/releases/2.4.0/venv
    prechecks: true
    precheck_timeout: 10
  register: plan

- name: Show the report
  ansible.builtin.debug:
    msg: "{{ plan.report_markdown }}"

- name: Review only, never fail on risk
  safedeploy.django.django_migration_plan:
    project_path: /srv/shop/current
    python: /srv/shop/current/venv/bin/python
    settings: shopsite.settings
    fail_on_block: false
  register: review
"""

RETURN = r"""
plan:
  description: The pending migrations, in the order C(manage.py migrate --plan) applies them.
  returned: success
  type: list
  elements: dict
  contains:
    id:
      description: V(app_label.migration_name).
      type: str
      sample: shop.0007_order_status
    app_label:
      description: The app.
      type: str
    name:
      description: The migration name.
      type: str
    atomic:
      description: Whether the migration runs in one transaction.
      type: bool
    phase:
      description: V(pre) (applied before the rollout) or V(post) (after it; see O(post_migrations)).
      type: str
    risk:
      description: Highest risk of its verdicts (V(none), V(low), V(medium), V(high)).
      type: str
    reversible:
      description: Whether every operation can be unapplied.
      type: bool
    sql:
      description: The SQL of the migration, like C(sqlmigrate), each operation preceded by a C(--) comment.
      type: list
      elements: str
    sql_error:
      description: Why part of the SQL could not be rendered (it depends on the live schema), or null.
      type: str
    verdicts:
      description: All verdicts of the migration; each has C(operation) (index or null for the migration itself).
      type: list
      elements: dict
    operations:
      description:
        - One entry per operation.
        - Besides the keys below, each entry has C(description) (Django's own description of the operation),
          C(model), C(reversible), C(reduces_to_sql), C(new_tables) and, depending on the operation, the facts
          the rules judged (C(field), C(field_before), C(run_sql), C(run_python), C(index), C(constraint)).
      type: list
      elements: dict
      contains:
        index:
          description: Position in the migration.
          type: int
        type:
          description: Operation class, for example V(AddField).
          type: str
        table:
          description: The table of the operation's model, if any.
          type: str
        tables:
          description: Every table the operation's SQL touches.
          type: list
          elements: str
        created_in_plan:
          description: Whether the operation's table is created by this plan (so no running code uses it).
          type: bool
        risk:
          description: Highest risk of the operation's verdicts.
          type: str
        sql:
          description: The operation's SQL statements.
          type: list
          elements: str
        sql_error:
          description: Error raised while rendering the SQL (the SQL depends on the live schema), or null.
          type: str
        verdicts:
          description: Rule verdicts.
          type: list
          elements: dict
          contains:
            rule:
              description: Rule id.
              type: str
            risk:
              description: Risk, graded by table size for size-sensitive rules.
              type: str
            title:
              description: Short title.
              type: str
            why:
              description: What goes wrong.
              type: str
            alternative:
              description: The safer way, in one line.
              type: str
            sequence:
              description:
                - The safe sequence, as ordered steps (releases, migrations, backfills), each naming the Django
                  operation, the collection module or playbook, or the deploy phase it uses.
                - Empty for low-risk rules. The Markdown report numbers the steps; see C(docs/rules.md).
              type: list
              elements: str
            detail:
              description: The statement or table size that triggered the rule, when there is one.
              type: str
              returned: sometimes
            lock:
              description:
                - The table lock PostgreSQL takes for it.
                - For example V(ACCESS EXCLUSIVE), V(SHARE), V(none) or V(momentary).
              type: str
            work:
              description: What runs under that lock (V(none), V(scan), V(rewrite), V(index build), V(data change)).
              type: str
            backward_incompatible:
              description: Whether the code still serving during the rollout breaks on it.
              type: bool
            table:
              description: The table that was measured, or null.
              type: str
            table_stats:
              description: That table's numbers (C(rows), C(bytes), C(writes_per_second), ...), when known.
              type: dict
              returned: sometimes
            decided_by:
              description:
                - Which numbers or property decided the risk.
                - "For example C(big: ~1,200,000 rows, 160.0 MiB: rows >= large_table_rows 1,000,000)."
              type: str
            statement:
              description: The SQL statement the verdict is about, for statement-level rules.
              type: str
              returned: sometimes
        prechecks:
          description: Results of the data pre-checks of the operation (only with O(prechecks=true)).
          type: list
          elements: dict
          returned: sometimes
direction:
  description: V(forwards), V(backwards) (O(target_migration) below the applied state) or V(none) (nothing to do).
  returned: success
  type: str
migration_target:
  description: The resolved O(target_migration) (C(app_label), C(name); C(name) null for V(zero)), or null.
  returned: success
  type: dict
thresholds:
  description: The size thresholds used.
  returned: success
  type: dict
prechecks:
  description:
    - Every data pre-check that ran, with C(migration), C(operation), C(kind) (V(nulls), V(duplicates), V(orphans)),
      C(table), C(columns), C(status) (V(pass), V(fail), V(timeout), V(skipped), V(error)), C(found) and C(message).
    - Null when O(prechecks=false).
  returned: success
  type: list
  elements: dict
plan_digest:
  description:
    - sha256 of the pending migrations (ids and file contents, in plan order); null for a backwards plan.
    - Give it to M(safedeploy.django.django_migrate_once) as its C(expected_plan_digest) to refuse migrating
      anything but the plan that was approved.
  returned: success
  type: str
plan_digests:
  description: The digest of the whole plan (C(all)) and of its pre-deploy part (C(pre)), for a migrate with that phase.
  returned: success
  type: dict
pending:
  description: Ids of the migrations of the plan (to apply, or to unapply when RV(direction=backwards)), in plan order.
  returned: success
  type: list
  elements: str
highest_risk:
  description: Highest risk over the plan; V(none) when nothing is pending.
  returned: success
  type: str
  sample: high
missing_migrations:
  description: Model changes without a migration, as app label to names of the migrations C(makemigrations) would write.
  returned: success
  type: dict
  sample:
    shop: ["0008_product_color"]
target:
  description: The database the plan was made against. Never contains the password.
  returned: success
  type: dict
  contains:
    host:
      description: Server host.
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
    server_version:
      description: PostgreSQL server version.
      type: str
    system_identifier:
      description: The cluster's system identifier (C(pg_control_system())), or null when not readable.
      type: str
    in_recovery:
      description: Whether the server is a replica (C(pg_is_in_recovery())).
      type: bool
tables:
  description: Size of each touched table that exists now, C(rows) (estimate, -1 if never analyzed) and C(bytes).
  returned: success
  type: dict
gate:
  description: The gate decision.
  returned: success
  type: dict
  contains:
    max_risk:
      description: The threshold used.
      type: str
    blocked:
      description: Whether a verdict above O(max_risk) is not covered by a valid waiver.
      type: bool
    reasons:
      description: One line per blocking verdict.
      type: list
      elements: str
    waived:
      description: Verdicts let through by a waiver, with the waiver's reason and expiry.
      type: list
      elements: dict
    expired_waivers:
      description: Waivers that were not applied because they expired.
      type: list
      elements: dict
    invalid_waivers:
      description: Waivers that do not count because something is missing or wrong, each with C(problems).
      type: list
      elements: dict
    unused_waivers:
      description: Valid waivers that nothing in this plan needed.
      type: list
      elements: dict
report_markdown:
  description: A readable report (Markdown table of the plan, gate, waivers, missing migrations).
  returned: success
  type: str
report_sarif:
  description:
    - The plan as a SARIF 2.1.0 log, for code scanning (for example GitHub's C(upload-sarif)).
    - One result per verdict riskier than V(none), at the operation's line of the migration file (relative to
      O(project_path), base id C(PROJECTROOT)); level C(error), C(warning) or C(note) for V(high), V(medium) or
      V(low). Each result's C(properties) has C(risk), C(migration), C(operation), C(blocked) and C(waived);
      waived verdicts carry an accepted suppression with the waiver's reason.
  returned: success
  type: dict
"""

import datetime

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.safedeploy.django.plugins.module_utils import _django_runner, _rules, _sarif


def main():
    argument_spec = dict(_django_runner.COMMON_ARGUMENT_SPEC)
    argument_spec.update(
        check_missing=dict(type="bool", default=True),
        fail_on_missing=dict(type="bool", default=True),
        max_risk=dict(type="str", default="medium", choices=["low", "medium", "high"]),
        waivers=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                migration=dict(type="str"),
                rule=dict(type="str"),
                reason=dict(type="str"),
                approved_by=dict(type="str"),
                expires=dict(type="str"),
            ),
        ),
        fail_on_block=dict(type="bool", default=True),
        target_migration=dict(
            type="dict",
            options=dict(
                app_label=dict(type="str", required=True),
                name=dict(type="str", required=True),
            ),
        ),
        thresholds=dict(
            type="dict",
            default={},
            options=dict(
                large_table_rows=dict(type="int", default=1_000_000),
                large_table_bytes=dict(type="int", default=1024**3),
                tiny_table_rows=dict(type="int", default=10_000),
                busy_table_writes_per_second=dict(type="float", default=0.0),
            ),
        ),
        post_migrations=dict(type="list", elements="str", default=[]),
        prechecks=dict(type="bool", default=False),
        precheck_timeout=dict(type="float", default=5.0),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=_django_runner.COMMON_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    _django_runner.register_secrets(module)
    params = module.params

    try:
        thresholds = _rules.Thresholds.from_params(params["thresholds"])
    except ValueError as exc:
        module.fail_json(msg=f"thresholds: {exc}")
    if params["precheck_timeout"] <= 0:
        module.fail_json(msg="precheck_timeout must be a number of seconds above 0, e.g. 5")
    waivers, invalid_waivers = _rules.parse_waivers(params["waivers"])

    payload = {
        "check_missing": params["check_missing"],
        "target": params["target_migration"],
        "prechecks": params["prechecks"],
        "post_migrations": params["post_migrations"],
        "precheck_timeout_ms": int(params["precheck_timeout"] * 1000),
    }
    reply = _django_runner.run_helper(module, params, "plan", payload)
    today = datetime.datetime.now(datetime.UTC).date()
    result = _rules.assess_plan(
        reply, params["max_risk"], waivers, today, invalid_waivers=invalid_waivers, thresholds=thresholds
    )
    result["report_sarif"] = _sarif.render(result, _rules.RULES, params["project_path"])

    missing = result["missing_migrations"]
    if missing and params["check_missing"] and params["fail_on_missing"]:
        names = "; ".join(f"{app}: {', '.join(items)}" for app, items in missing.items())
        module.fail_json(
            msg=f"models have changes without a migration ({names}): run 'manage.py makemigrations' and ship "
            "the migrations with the release, or set fail_on_missing=false.",
            **result,
        )
    if result["gate"]["blocked"] and params["fail_on_block"]:
        module.fail_json(
            msg=f"the migration plan exceeds max_risk={params['max_risk']}: "
            + "; ".join(result["gate"]["reasons"])
            + ". Make the migrations safer, or add a waiver (migration, rule, reason, approved_by, expires).",
            **result,
        )
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
