# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration risk rules: data in one registry, pure functions that apply them.

Input is what ``_django_helper`` reports about each operation of the plan
(its facts and the SQL Django would run); output is a list of verdicts
``{rule, risk, title, why, alternative, sequence}`` per operation, a risk per migration,
the gate decision (``max_risk`` + waivers) and a Markdown report.
Nothing here imports Ansible or Django, so every rule is unit-testable.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import re
from dataclasses import dataclass

RISK_LEVELS = ("none", "low", "medium", "high")
RISK_RANK = {name: rank for rank, name in enumerate(RISK_LEVELS)}
ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"


@dataclass(frozen=True)
class Thresholds:
    """What makes a table big, tiny or busy; the module's ``thresholds`` option."""

    large_table_rows: int = 1_000_000
    large_table_bytes: int = 1024**3
    tiny_table_rows: int = 10_000
    # Off by default: pg_stat_user_tables only gives an average since the statistics were reset.
    busy_table_writes_per_second: float = 0.0

    @classmethod
    def from_params(cls, params: dict | None) -> Thresholds:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        errors = []
        for name in ("large_table_rows", "large_table_bytes", "tiny_table_rows"):
            if name in params and (not isinstance(params[name], int) or params[name] < 0):
                errors.append(f"{name} must be an integer >= 0, got {params[name]!r}")
        busy = params.get("busy_table_writes_per_second")
        if busy is not None and (not isinstance(busy, (int, float)) or busy < 0):
            errors.append(f"busy_table_writes_per_second must be a number >= 0, got {busy!r}")
        if not errors and params.get("tiny_table_rows", cls.tiny_table_rows) >= params.get(
            "large_table_rows", cls.large_table_rows
        ):
            errors.append("tiny_table_rows must be smaller than large_table_rows")
        if errors:
            raise ValueError("; ".join(errors))
        unknown = set(params) - {"large_table_rows", "large_table_bytes", "tiny_table_rows",
                                 "busy_table_writes_per_second"}
        if unknown:
            raise ValueError(f"unknown thresholds: {', '.join(sorted(unknown))}")
        return cls(**params)


DEFAULT_THRESHOLDS = Thresholds()
# Kept for callers of 0.1.0.
LARGE_TABLE_ROWS = DEFAULT_THRESHOLDS.large_table_rows
LARGE_TABLE_BYTES = DEFAULT_THRESHOLDS.large_table_bytes


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    risk: str  # on a table neither tiny nor large (or of unknown size)
    why: str
    alternative: str
    level: str = "django"  # django (operation facts), postgresql (SQL text), data (pre-checks), rollback
    size_sensitive: bool = False  # graded by the size of the touched table
    lock: str = "none"  # the strongest table lock PostgreSQL takes for it
    work: str = "none"  # what it does under that lock: none, scan, rewrite, index build, data change
    breaks_old_code: bool = False  # backward-incompatible with the code still serving during the rollout
    # The safe way to make the same change, as ordered steps (releases, migrations, backfills), each naming
    # the Django operation, the collection module/playbook or the phase it uses. Empty for low-risk rules.
    sequence: tuple[str, ...] = ()


# Steps that several sequences share. "Release N" is one deploy (playbooks/deploy.yml); a pre-deploy
# migration is the default phase, a post-deploy one has safedeploy_phase = "post" (or is listed in
# release_post_migrations) and runs in the contract play once every host runs the new code.
_BACKFILL = "`safedeploy.django.backfill` playbook (module `safedeploy.django.django_backfill`)"
_POST = "`safedeploy_phase = \"post\"` on its Migration class (or its id in `release_post_migrations`)"


def _not_null_steps(release: str, when: str = "") -> tuple[str, ...]:
    """SET NOT NULL without a scan under ACCESS EXCLUSIVE: a validated CHECK first (PostgreSQL 12+)."""
    return (
        f"Release {release}, pre-deploy migration{when}: `AddConstraintNotValid(\"<model>\", CheckConstraint("
        "condition=Q(<field>__isnull=False), name=\"<check>\"))`: NOT VALID, so no scan and only a momentary "
        "ACCESS EXCLUSIVE lock; new and updated rows are checked from now on.",
        f"Release {release}, next migration (its own, so that the previous lock is already released): "
        "`ValidateConstraint(\"<model>\", \"<check>\")`: scans the table under SHARE UPDATE EXCLUSIVE only, "
        "reads and writes go on.",
        f"Release {release}, next migration: `AlterField(\"<model>\", \"<field>\", ...(null=False))`: "
        "PostgreSQL 12+ proves SET NOT NULL from the validated CHECK and skips the scan. Keep these three "
        "migrations in one release: the planner then sees the validated CHECK and grades this step "
        "`catalog-change`.",
        f"Release {release}, same migration or a later one: `RemoveConstraint(\"<model>\", \"<check>\")`: "
        "the CHECK is redundant once the column is NOT NULL.",
    )


def _drop_column_steps(release: str, later: str, field: str) -> tuple[str, ...]:
    """Stop using a column in one release, drop it in the next one's post-deploy phase."""
    return (
        f"Release {release}, code: stop reading and writing `{field}` (querysets, `values()`, forms, "
        "serializers, raw SQL) and delete it from the model.",
        f"Release {release}, pre-deploy migration: `AlterField(\"<model>\", \"{field}\", ...(null=True))` if "
        "the column is NOT NULL without a database default (DROP NOT NULL, catalog only: this release's "
        f"INSERTs leave the column out), then `SeparateDatabaseAndState(state_operations=[RemoveField("
        f"\"<model>\", \"{field}\")])`: the field leaves Django's state, the column stays, so going back to "
        "the previous release needs nothing.",
        f"Release {later}, post-deploy migration with {_POST}: `SeparateDatabaseAndState(state_operations=["
        f"AddField(\"<model>\", \"{field}\", ...(null=True))])` puts the field back into the state as it is "
        f"in the table, then `RemoveField(\"<model>\", \"{field}\")` drops the column; the contract play "
        "applies it after a verified snapshot (graded `remove-field` medium there, while the same DROP as raw "
        "`RunSQL` is `raw-sql-destructive`, high in any phase).",
    )


def _copy_table_steps(release: str) -> tuple[str, ...]:
    """Expand/contract for a table that must really get a new name."""
    return (
        f"Release {release}, pre-deploy migration: `CreateModel` of the new table (a model with the new "
        "`db_table`); the code writes every change to both tables.",
        f"After release {release}: copy the old rows with the {_BACKFILL} in command mode: `backfill_command` "
        "names a management command that copies the rows with `--start` <= id < `--end` idempotently "
        "(e.g. `bulk_create(..., ignore_conflicts=True)`).",
        f"Release {release}+1: the code reads the new table and still writes both (hosts of release "
        f"{release} still read the old one during the rollout).",
        f"Release {release}+2: the code stops using the old model and deletes it; put the generated "
        f"`DeleteModel` in a migration of its own with {_POST}: the contract play applies it after a "
        "verified snapshot, once every host runs the release.",
    )


_RULE_LIST = [
    # -- Django level ----------------------------------------------------------
    Rule(
        "create-table", "New table", "low",
        "A new table is invisible to the running code; CREATE TABLE takes no lock on existing tables.",
        "Nothing to do.",
        lock="none", work="none",
    ),
    Rule(
        "add-nullable-column", "New nullable column", "low",
        "ADD COLUMN ... NULL only changes the catalog (no rewrite), and old code that does not know the "
        "column keeps working: its INSERTs leave it NULL.",
        "Nothing to do.",
        lock=ACCESS_EXCLUSIVE, work="none",
    ),
    Rule(
        "add-column-db-default", "New NOT NULL column with a database default", "low",
        "With a constant (or now()) db_default PostgreSQL 11+ stores the default in the catalog without "
        "rewriting the table, and old code's INSERTs get the default from the database.",
        "Nothing to do.",
        lock=ACCESS_EXCLUSIVE, work="none",
    ),
    Rule(
        "add-column-volatile-db-default", "New column with an expression as database default", "medium",
        "A volatile default expression makes PostgreSQL rewrite the whole table under an ACCESS EXCLUSIVE lock.",
        "Add the column nullable, backfill in batches after the deploy, then add NOT NULL (via a validated CHECK) "
        "and the default.",
        size_sensitive=True,
        lock=ACCESS_EXCLUSIVE, work="rewrite",
        sequence=(
            "Release 1, pre-deploy migration: `AddField(\"<model>\", \"<field>\", ...(null=True))` with no "
            "default in the migration: a catalog-only ADD COLUMN, no rewrite. The model may keep a Python "
            "`default=` callable, so that release 1's code fills new rows.",
            f"After release 1: the {_BACKFILL} with `backfill_set` = the expression (e.g. "
            "`<col> = gen_random_uuid()`) and `backfill_where` = `<col> IS NULL`, in batches outside the deploy.",
            *_not_null_steps("2", " (if the column must be NOT NULL)"),
            "Release 2 or later, if new rows must get the value from the database: `AlterField` with "
            "`db_default=` the expression: SET DEFAULT only changes the catalog.",
        ),
    ),
    Rule(
        "add-column-new-table", "New column on a table created by this plan", "low",
        "The table does not exist yet for the running code.",
        "Nothing to do.",
        lock="none", work="none",
    ),
    Rule(
        "not-null-django-default", "NOT NULL column with only a Django default", "high",
        "Django adds the column with a DEFAULT and drops the DEFAULT again in the same migration. "
        "The old code, still running during the rollout, does not send the column: its INSERTs fail "
        "with a NOT NULL violation (backward-incompatible).",
        "Use db_default=... (Django 5+) so the database fills the column, or add it null=True first and "
        "make it NOT NULL in a later release.",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
        sequence=(
            "Release 1, pre-deploy migration: `AddField(\"<model>\", \"<field>\", ...(null=True))` with no "
            "default in the migration: a catalog-only ADD COLUMN, the old code's INSERTs leave it NULL; release "
            "1's code writes it on every save. (For a constant value, `AddField` with `db_default=<constant>` "
            "and NOT NULL right away is already safe: stop there.)",
            f"After release 1: fill the old rows with the {_BACKFILL}: `backfill_set` = `<col> = <value>`, "
            "`backfill_where` = `<col> IS NULL`.",
            *_not_null_steps("2"),
        ),
    ),
    Rule(
        "not-null-no-default", "NOT NULL column without any default on an existing table", "high",
        "Existing rows have no value for it and the old code's INSERTs do not send it: the migration or "
        "the old code's writes fail.",
        "Add the column null=True (or with a constant db_default), backfill, then add NOT NULL through a "
        "validated CHECK constraint in a later release.",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
        sequence=(
            "Release 1, pre-deploy migration: `AddField(\"<model>\", \"<field>\", ...(null=True))` with no "
            "default in the migration: a catalog-only ADD COLUMN, the old code's INSERTs leave it NULL; release "
            "1's code writes it on every save. (For a constant value, `AddField` with `db_default=<constant>` "
            "and NOT NULL right away is already safe: stop there.)",
            f"After release 1: fill the old rows with the {_BACKFILL}: `backfill_set` = `<col> = <value>`, "
            "`backfill_where` = `<col> IS NULL`.",
            *_not_null_steps("2"),
        ),
    ),
    Rule(
        "alter-field-set-not-null", "Existing column becomes NOT NULL", "high",
        "The column was nullable, so the old code still running during the rollout may write NULL into it: "
        "those writes fail (backward-incompatible, whatever the table size). SET NOT NULL also scans the "
        "whole table under an ACCESS EXCLUSIVE lock.",
        "Release code that never writes NULL first; then add a CHECK (col IS NOT NULL) NOT VALID "
        "constraint, VALIDATE it, and SET NOT NULL (PostgreSQL 12+ uses the validated constraint and skips "
        "the scan) in a later release.",
        level="postgresql",
        lock=ACCESS_EXCLUSIVE, work="scan", breaks_old_code=True,
        sequence=(
            "Release 1, code only: never write NULL into the column any more (the model field stays "
            "`null=True`, no migration).",
            f"After release 1: fill the NULLs with the {_BACKFILL}: `backfill_set` = `<col> = <value>`, "
            "`backfill_where` = `<col> IS NULL`.",
            *_not_null_steps("2"),
        ),
    ),
    Rule(
        "remove-field", "Column removed", "high",
        "The running (old) code still selects and writes this column: every query on the model fails "
        "from the moment the migration commits until the new code runs everywhere.",
        "Expand/contract: release code that no longer uses the field (removed from the state with "
        "SeparateDatabaseAndState) first, drop the column in a later release's post-deploy phase.",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
        sequence=_drop_column_steps("N", "N+1", "<field>"),
    ),
    Rule(
        "delete-model", "Table dropped", "high",
        "The running code still uses the model; the data is gone unless restored from a snapshot.",
        "Stop using the model (removed from the state with SeparateDatabaseAndState) in one release, drop the "
        "table in a later release's post-deploy phase, after a snapshot.",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
        sequence=(
            "Release N, code: stop using the model (querysets, admin, signals, foreign keys to it) and delete "
            "it. Pre-deploy migration: `SeparateDatabaseAndState(state_operations=[DeleteModel(\"<model>\")])` "
            "(foreign keys to it: `AlterField(..., null=True)` first, then their `RemoveField` in the same "
            "`state_operations`): the model leaves Django's state, the table stays.",
            f"Release N+1, post-deploy migration with {_POST}: `SeparateDatabaseAndState(state_operations=["
            "CreateModel(\"<model>\", fields=[...])])` puts the model back into the state as the table is, then "
            "`DeleteModel(\"<model>\")` drops it; the contract play takes a verified snapshot "
            "(`safedeploy.django.pg_snapshot`) first (graded `delete-model` medium there).",
            "Keep that snapshot until the data is surely not needed: `safedeploy.django.rollback` with "
            "`rollback_mode=restore` brings it back.",
        ),
    ),
    Rule(
        "rename-field", "Column renamed", "high",
        "The running code uses the old column name: its queries fail until every host runs the new code.",
        "Add the new column, write both, backfill, switch reads, drop the old one in a later release "
        "(or keep the column name with db_column=...).",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
        sequence=(
            "Release 1, pre-deploy migration: `AddField` of the new column with `null=True` (catalog only); "
            "the code writes both the old and the new field on every save. (If only the Python name must "
            "change, keep the column with `db_column=\"<old column>\"`: the `RenameField` is then state-only.)",
            f"After release 1: copy old into new with the {_BACKFILL}: `backfill_set` = `<new> = <old>`, "
            "`backfill_where` = `<new> IS DISTINCT FROM <old>`.",
            "Release 2: the code reads the new field and still writes both (release 1 hosts still read the old "
            "one during the rollout). If the column must be NOT NULL: `AddConstraintNotValid` -> "
            "`ValidateConstraint` -> `AlterField(null=False)`, three pre-deploy migrations of release 2 (see "
            "`alter-field-set-not-null`).",
            *_drop_column_steps("3", "4", "<old>"),
        ),
    ),
    Rule(
        "rename-model", "Table renamed", "high",
        "The running code uses the old table name: its queries fail until every host runs the new code.",
        "Keep the table name with Meta.db_table; to really rename the table, copy it to a new one "
        "(expand/contract over three releases).",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
        sequence=(
            "Release N: set `Meta.db_table` to the current table name before renaming the class; the generated "
            "`RenameModel` then leaves the table alone (graded `state-only`). Check the planned SQL: the "
            "`<model>_id` columns of auto-created many-to-many tables are still renamed. Stop here unless the "
            "table itself must get the new name.",
            *_copy_table_steps("N"),
        ),
    ),
    Rule(
        "alter-model-table", "Table renamed (db_table changed)", "high",
        "The running code uses the old table name.",
        "Keep db_table; to really rename the table, copy it to a new one (expand/contract over three releases).",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
        sequence=(
            "Release N: keep `Meta.db_table` at the current table name (the `AlterModelTable` goes away). Stop "
            "here unless the table itself must get the new name.",
            *_copy_table_steps("N"),
        ),
    ),
    Rule(
        "drop-on-new-table", "Destructive change on a table created by this plan", "low",
        "The table did not exist before this plan, so no running code uses it.",
        "Nothing to do; consider squashing the migrations.",
        lock="none", work="none",
    ),
    Rule(
        "run-python", "Data migration (RunPython)", "medium",
        "Python code runs inside the deploy; its duration and locks grow with the data, and it cannot be "
        "graded from SQL.",
        "Keep data migrations small, or run big backfills after the deploy in batches (django_backfill).",
        lock="unknown", work="data change",
        sequence=(
            "Release N, pre-deploy migration: keep only small, bounded data work in the `RunPython` (seed rows, "
            "a few thousand updates), with `reverse_code` (`RunPython.noop` when undoing needs no work).",
            "Move big data changes into a management command that handles the keys `--start` <= pk < `--end`, "
            "idempotently, in its own transaction per call.",
            f"After release N: run it in batches with the {_BACKFILL}, `backfill_command` (and "
            "`backfill_command_args`): resumable, outside the deploy, short row locks.",
            "Release N+1 or later: schema that needs the data (NOT NULL, a constraint) only once the backfill "
            "reports finished.",
        ),
    ),
    Rule(
        "run-python-irreversible", "RunPython without reverse_code", "medium",
        "The migration cannot be unapplied: rolling back the schema needs a snapshot restore.",
        "Give reverse_code (migrations.RunPython.noop when undoing needs no work).",
        lock="none", work="none",
        sequence=(
            "Give the `RunPython` a `reverse_code` that undoes it, or `RunPython.noop` when unapplying needs no "
            "data work: `safedeploy.django.rollback` with `rollback_mode=migrations` can then unapply it.",
            "If it really cannot be undone (data deleted or overwritten): keep it irreversible and keep the "
            "snapshot the deploy takes before migrating (`safedeploy.django.pg_snapshot`); going back is then "
            "`rollback_mode=restore`.",
        ),
    ),
    Rule(
        "run-sql-irreversible", "RunSQL without reverse_sql", "medium",
        "The migration cannot be unapplied: rolling back the schema needs a snapshot restore.",
        "Give reverse_sql (migrations.RunSQL.noop when undoing needs no work).",
        lock="none", work="none",
        sequence=(
            "Give the `RunSQL` a `reverse_sql` that undoes it, or `RunSQL.noop` when unapplying needs no work: "
            "`safedeploy.django.rollback` with `rollback_mode=migrations` can then unapply it.",
            "If it really cannot be undone: keep it irreversible and keep the snapshot the deploy takes before "
            "migrating (`safedeploy.django.pg_snapshot`); going back is then `rollback_mode=restore`.",
        ),
    ),
    Rule(
        "sql-depends-on-live-schema", "SQL cannot be rendered without the live schema", "medium",
        "Django introspects existing constraints or indexes to write this operation's SQL (e.g. "
        "unique_together / index changes, RenameIndex with old_fields), so its SQL could not be shown "
        "for this database state; it is graded from the operation only.",
        "Review the operation by hand, or plan against a copy of production with the earlier migrations applied.",
        lock="unknown", work="unknown",
        sequence=(
            "Plan against a database that has the earlier migrations applied (a staging copy of production): "
            "`safedeploy.django.django_migration_plan` then renders and grades the real SQL.",
            "Or read `manage.py sqlmigrate <app> <migration>` on such a database and look for blocking index "
            "builds and validated constraints.",
            "Replace `unique_together` / `index_together` changes by explicit `Meta.indexes` / "
            "`Meta.constraints`, built with `AddIndexConcurrently` or the `add-unique-constraint` sequence.",
        ),
    ),
    Rule(
        "state-only", "No SQL (state-only change)", "none",
        "help_text, choices, verbose_name, ordering ... change Django's model state only; nothing runs in "
        "the database.",
        "Nothing to do.",
        lock="none", work="none",
    ),
    Rule(
        "non-atomic-migration", "Migration is not atomic (single step)", "low",
        "atomic = False is what CONCURRENTLY needs; with a single step there is nothing to half-apply.",
        "Nothing to do; keep such migrations to that single operation.",
        lock="none", work="none",
    ),
    Rule(
        "non-atomic-partial-apply", "Non-atomic migration with several steps", "medium",
        "A failure in the middle leaves the steps before it applied and the migration unrecorded: the "
        "next migrate fails on them (e.g. 'column already exists') and the deploy is stuck half-migrated.",
        "Move the step that needs atomic = False (CONCURRENTLY) into a migration of its own; keep the "
        "other steps atomic.",
        lock="none", work="none",
        sequence=(
            "Put each CONCURRENTLY operation (`AddIndexConcurrently`, `RemoveIndexConcurrently`, or `RunSQL` "
            "with `CREATE INDEX CONCURRENTLY`) in a migration of its own with `atomic = False`.",
            "Put the other operations in ordinary atomic migrations before or after it (dependencies keep the "
            "order).",
            "If a non-atomic migration fails anyway, `safedeploy.django.django_migrate_once` drops the INVALID "
            "index it left before the next run; fix the cause and deploy again.",
        ),
    ),
    Rule(
        "mixed-phase-migration", "Migration mixes expand and contract steps", "medium",
        "It adds schema the new code needs and removes schema the old code uses. In the pre-deploy phase the "
        "removal breaks the old code still serving; in the post-deploy phase the addition comes after the new "
        "code already needs it.",
        "Split it: the additions in a pre-deploy migration, the removals in a later one marked "
        "safedeploy_phase = 'post'.",
        lock="none", work="none",
        sequence=(
            "Release N, pre-deploy migration: the expand operations (`CreateModel`, `AddField`, `AddIndex` / "
            "`AddIndexConcurrently`, `AddConstraint`), applied before the rollout.",
            f"Release N (or later), post-deploy migration with {_POST}, depending on the first: the contract "
            "operations (`RemoveField`, `DeleteModel`), applied by the contract play once every host runs the "
            "new code.",
        ),
    ),
    Rule(
        "concurrently-in-atomic", "CONCURRENTLY inside an atomic migration", "medium",
        "CREATE/DROP INDEX CONCURRENTLY cannot run inside a transaction block: the migration fails at "
        "deploy (Django refuses AddIndexConcurrently when atomic, PostgreSQL refuses the raw SQL).",
        "Set atomic = False on the migration and keep the concurrent operation alone in it.",
        lock="none", work="none",
        sequence=(
            "Move the operation into a migration of its own and set `atomic = False` on its Migration class: "
            "`AddIndexConcurrently` / `RemoveIndexConcurrently`, or `RunSQL(\"CREATE INDEX CONCURRENTLY ...\", "
            "reverse_sql=\"DROP INDEX CONCURRENTLY ...\")`.",
            "Keep nothing else in that migration (see `non-atomic-partial-apply`).",
        ),
    ),
    Rule(
        "dml-with-ddl", "Data change in the same transaction as DDL on an existing table", "medium",
        "In an atomic migration the strong lock the DDL takes (ACCESS EXCLUSIVE for ALTER TABLE) is held "
        "until COMMIT, i.e. for the whole duration of the RunPython / UPDATE that follows or precedes it.",
        "Put schema changes and data changes in separate migrations (or run the backfill after the deploy).",
        size_sensitive=True,
        lock=ACCESS_EXCLUSIVE, work="data change",
        sequence=(
            "Migration 1: the schema change alone (e.g. `AddField(..., null=True)`), so that its lock is released "
            "at its COMMIT.",
            "Migration 2: the data change alone (`RunPython` / `RunSQL`), only when it is small.",
            f"For a big table, drop migration 2 and run the change after the deploy with the {_BACKFILL}, in "
            "batches.",
            "A later release: schema that needs the data (NOT NULL, a constraint) once the backfill finished.",
        ),
    ),
    Rule(
        "several-strong-locks", "Several strong-lock statements in one transaction", "medium",
        "Each lock is held until the migration commits: writes wait for the sum of all the steps, and "
        "locks taken on several tables in an order the application does not use can deadlock.",
        "Split the migration so that each lock-taking step commits on its own.",
        size_sensitive=True,
        lock=ACCESS_EXCLUSIVE, work="scan",
        sequence=(
            "One migration per lock-taking step, chained by dependencies: each commits and releases its lock "
            "before the next one starts.",
            "Replace each step by its non-blocking form: `AddIndexConcurrently` (own migration, `atomic = "
            "False`), `AddConstraintNotValid` + `ValidateConstraint`, expand/contract instead of a type change.",
            "When steps touch several tables, order them the way the application locks them (e.g. parent "
            "before child) so that they cannot deadlock with it.",
        ),
    ),
    Rule(
        "catalog-change", "SQL without a lock or size hazard", "low",
        "The SQL only changes the catalog, creates new objects or works CONCURRENTLY (DROP NOT NULL, SET "
        "DEFAULT, RENAME INDEX, a NOT VALID constraint, a new table, CREATE INDEX CONCURRENTLY ...): at "
        "most a momentary lock, no scan or rewrite under a blocking lock, compatible with the old code.",
        "Nothing to do.",
        lock="momentary", work="none",
    ),
    # -- PostgreSQL level (SQL text) -------------------------------------------
    Rule(
        "create-index-blocking", "CREATE INDEX without CONCURRENTLY on an existing table", "medium",
        "CREATE INDEX takes a SHARE lock: every INSERT, UPDATE and DELETE on the table waits until the "
        "index is built, which takes as long as a full table scan and sort.",
        "Use django.contrib.postgres.operations.AddIndexConcurrently in a migration with atomic = False.",
        level="postgresql", size_sensitive=True,
        lock="SHARE", work="index build",
        sequence=(
            "A migration of its own with `atomic = False`: `AddIndexConcurrently(\"<model>\", models.Index("
            "fields=[...], name=\"<index>\"))` instead of `AddIndex`; one index per migration.",
            "For an index Django adds by itself (`db_index=True`, a `ForeignKey`): in such a migration, "
            "`SeparateDatabaseAndState(state_operations=[AlterField(...)], database_operations=[RunSQL("
            "'CREATE INDEX CONCURRENTLY \"<index>\" ON \"<table>\" (\"<col>\")', "
            "reverse_sql='DROP INDEX CONCURRENTLY \"<index>\"')])`, with the index name `manage.py sqlmigrate` "
            "shows.",
            "If the build fails, `safedeploy.django.django_migrate_once` drops the INVALID index it left before "
            "the next run.",
        ),
    ),
    Rule(
        "alter-column-type", "Column type change", "medium",
        "ALTER COLUMN ... TYPE rewrites the table and its indexes under an ACCESS EXCLUSIVE lock (reads "
        "and writes wait), and the old code may not handle the new type.",
        "Add a new column of the new type, backfill in batches, switch the code, drop the old column later "
        "(widening a varchar or making it text is already safe).",
        level="postgresql", size_sensitive=True,
        lock=ACCESS_EXCLUSIVE, work="rewrite",
        sequence=(
            "Release 1, pre-deploy migration: `AddField` of a new column of the new type with `null=True` "
            "(catalog only); the code writes both columns. (Widening a varchar, or varchar to text, needs none "
            "of this: `alter-column-type-no-rewrite`.)",
            f"After release 1: fill the new column with the {_BACKFILL}: `backfill_set` = `<new> = <old>` (a "
            "cast if needed), `backfill_where` = `<new> IS NULL AND <old> IS NOT NULL`.",
            "Release 2: the code reads the new column and still writes both; NOT NULL, if needed, with "
            "`AddConstraintNotValid` -> `ValidateConstraint` -> `AlterField(null=False)`.",
            *_drop_column_steps("3", "4", "<old>"),
        ),
    ),
    Rule(
        "alter-column-type-no-rewrite", "Column type change without a rewrite", "low",
        "Widening a varchar or turning it into text only changes the catalog.",
        "Nothing to do.",
        level="postgresql",
        lock=ACCESS_EXCLUSIVE, work="none",
    ),
    Rule(
        "add-constraint-validating", "Foreign key or CHECK constraint validated under lock", "medium",
        "ADD CONSTRAINT without NOT VALID scans the whole table while holding a lock that blocks writes "
        "(and for a foreign key, the referenced table too).",
        "Add the constraint NOT VALID (AddConstraintNotValid; RunSQL for a foreign key), then VALIDATE it in a "
        "separate migration (ValidateConstraint: only a SHARE UPDATE EXCLUSIVE lock).",
        level="postgresql", size_sensitive=True,
        lock="SHARE ROW EXCLUSIVE", work="scan",
        sequence=(
            "CHECK, migration 1: `AddConstraintNotValid(\"<model>\", CheckConstraint(condition=Q(...), "
            "name=\"<name>\"))` instead of `AddConstraint`: no scan, new and updated rows are checked.",
            "CHECK, migration 2 (its own): `ValidateConstraint(\"<model>\", \"<name>\")`: scans under SHARE "
            "UPDATE EXCLUSIVE only, reads and writes go on.",
            "Foreign key on a new column, migration 1: `AddField(..., models.ForeignKey(..., null=True, "
            "db_constraint=False, db_index=False))`, then its index with `AddIndexConcurrently` in a migration "
            "with `atomic = False`.",
            "Foreign key, next migration: `SeparateDatabaseAndState(state_operations=[AlterField(... "
            "db_constraint=True)], database_operations=[RunSQL('ALTER TABLE \"<table>\" ADD CONSTRAINT "
            "\"<fk>\" FOREIGN KEY (\"<col>\") REFERENCES \"<parent>\" (\"id\") DEFERRABLE INITIALLY "
            "DEFERRED NOT VALID', reverse_sql='ALTER TABLE \"<table>\" DROP CONSTRAINT \"<fk>\"')])`: "
            "Django's state gets the constraint, the database skips the scan.",
            "Foreign key, next migration (its own): `ValidateConstraint(\"<model>\", \"<fk>\")`: SHARE UPDATE "
            "EXCLUSIVE on the table, ROW SHARE on the referenced one.",
        ),
    ),
    Rule(
        "add-primary-key", "PRIMARY KEY added to an existing table", "medium",
        "ADD PRIMARY KEY builds a unique index and checks NOT NULL on its columns under an ACCESS EXCLUSIVE "
        "lock: reads and writes wait for a full scan and sort.",
        "CREATE UNIQUE INDEX CONCURRENTLY, make the columns NOT NULL via a validated CHECK, then ADD "
        "CONSTRAINT ... PRIMARY KEY USING INDEX.",
        level="postgresql", size_sensitive=True,
        lock=ACCESS_EXCLUSIVE, work="index build",
        sequence=(
            "Migration 1, with `atomic = False`: `RunSQL('CREATE UNIQUE INDEX CONCURRENTLY \"<index>\" ON "
            "\"<table>\" (\"<col>\")', reverse_sql='DROP INDEX CONCURRENTLY \"<index>\"')`.",
            "Make the key columns NOT NULL without a scan under lock: `AddConstraintNotValid` (CHECK IS NOT "
            "NULL) -> `ValidateConstraint` -> SET NOT NULL (`AlterField(null=False)`), each in its own "
            "migration.",
            "Last migration: `SeparateDatabaseAndState(database_operations=[RunSQL('ALTER TABLE \"<table>\" "
            "ADD CONSTRAINT \"<pk>\" PRIMARY KEY USING INDEX \"<index>\"', reverse_sql='ALTER TABLE "
            "\"<table>\" DROP CONSTRAINT \"<pk>\"')], state_operations=[AlterField(... primary_key=True)])`: "
            "a momentary ACCESS EXCLUSIVE lock, no index build, no scan. The planner cannot see that the "
            "columns are NOT NULL already and still reports `add-primary-key` for it: waive it for this "
            "migration.",
        ),
    ),
    Rule(
        "drop-index-blocking", "DROP INDEX without CONCURRENTLY", "medium",
        "DROP INDEX takes an ACCESS EXCLUSIVE lock on the table: it waits behind every running query and "
        "every query queues behind it; queries of the old code that used the index get slower.",
        "Use RemoveIndexConcurrently (DROP INDEX CONCURRENTLY) in a migration with atomic = False.",
        level="postgresql",
        lock=ACCESS_EXCLUSIVE, work="none",
        sequence=(
            "A migration of its own with `atomic = False`: `RemoveIndexConcurrently(\"<model>\", \"<index>\")` "
            "instead of `RemoveIndex` (DROP INDEX CONCURRENTLY waits for running queries instead of blocking "
            "them).",
            "For an index Django drops by itself (`db_index=False`, `unique=False`): in such a migration, "
            "`SeparateDatabaseAndState(state_operations=[AlterField(...)], database_operations=[RunSQL("
            "'DROP INDEX CONCURRENTLY \"<index>\"', reverse_sql='CREATE INDEX CONCURRENTLY ...')])`.",
            f"If the old code's queries need the index, make that migration post-deploy ({_POST}), so that it "
            "runs once only the new code serves.",
        ),
    ),
    Rule(
        "add-unique-constraint", "UNIQUE constraint built under lock", "medium",
        "ADD CONSTRAINT ... UNIQUE builds a unique index while blocking writes; duplicates make it fail.",
        "CREATE UNIQUE INDEX CONCURRENTLY first (atomic = False), then ADD CONSTRAINT ... UNIQUE USING INDEX "
        "(SeparateDatabaseAndState).",
        level="postgresql", size_sensitive=True,
        lock=ACCESS_EXCLUSIVE, work="index build",
        sequence=(
            "Look for duplicates first (`prechecks: true` on `safedeploy.django.django_migration_plan` reports "
            "them as `will-fail-duplicates`) and remove them.",
            "Migration 1, with `atomic = False`: `RunSQL('CREATE UNIQUE INDEX CONCURRENTLY \"<name>\" ON "
            "\"<table>\" (\"<col>\")', reverse_sql='DROP INDEX CONCURRENTLY \"<name>\"')` (Django's "
            "`AddIndexConcurrently` takes a `models.Index`, which cannot be unique).",
            "Migration 2: `SeparateDatabaseAndState(database_operations=[RunSQL('ALTER TABLE \"<table>\" ADD "
            "CONSTRAINT \"<name>\" UNIQUE USING INDEX \"<name>\"', reverse_sql='ALTER TABLE \"<table>\" "
            "DROP CONSTRAINT \"<name>\"')], state_operations=[AddConstraint(\"<model>\", "
            "models.UniqueConstraint(fields=[\"<field>\"], name=\"<name>\"))])` (for `unique=True` on the "
            "field: `state_operations=[AlterField(...)]`): a momentary lock, no index build.",
        ),
    ),
    Rule(
        "raw-sql-destructive", "Raw SQL drops, truncates or renames", "high",
        "DROP / TRUNCATE / RENAME in RunSQL breaks the running code or loses data.",
        "Move destructive SQL to a post-deploy phase after a verified snapshot.",
        level="postgresql",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
        sequence=(
            "Release N, code: stop using what the SQL drops or truncates. A rename cannot be made compatible: "
            "use the `rename-field` / `rename-model` sequence instead of `RENAME`.",
            "A column or table of a model: follow the `remove-field` / `delete-model` sequence (out of Django's "
            "state in release N, Django's `RemoveField` / `DeleteModel` in release N+1's post-deploy phase), "
            "which the planner grades as data removal (medium); a raw DROP stays high in any phase.",
            "Anything else (a view, another tool's table): the `RunSQL` with a `reverse_sql` in a migration of "
            f"release N+1 with {_POST}, after the contract play's verified snapshot "
            "(`safedeploy.django.pg_snapshot`); it stays graded high, so waive it for that migration.",
        ),
    ),
    Rule(
        "raw-sql-data-change", "Raw SQL changes rows of an existing table", "medium",
        "UPDATE / DELETE in the migration locks every row it touches for the whole transaction; on a big "
        "table that blocks the application's writes for long.",
        "Backfill in small batches after the deploy (django_backfill), outside the migration transaction.",
        level="postgresql", size_sensitive=True,
        lock="ROW EXCLUSIVE", work="data change",
        sequence=(
            "Release N, pre-deploy migration: only the schema the new code needs (e.g. `AddField(..., "
            "null=True)`), without the UPDATE / DELETE.",
            f"After release N: the same change with the {_BACKFILL}: an UPDATE as `backfill_set` + an idempotent "
            "`backfill_where`, a DELETE or anything else as `backfill_command`; batches of "
            "`backfill_batch_size` rows, each its own transaction, resumable.",
            "A later release: schema that depends on the result (NOT NULL, a constraint) once the backfill "
            "reports finished.",
        ),
    ),
    # -- data pre-checks (opt-in: prechecks=true) --------------------------------------
    Rule(
        "will-fail-nulls", "NULLs where the migration requires NOT NULL", "medium",
        "The column already holds NULL values: SET NOT NULL fails at deploy and the migration is rolled "
        "back (or, non-atomic, left half-applied) while the new code waits for it.",
        "Backfill the NULLs (in batches, before the release), or keep the column nullable.",
        level="data",
        sequence=(
            "Release N, code only: never write NULL into the column (or keep it `null=True` and stop here).",
            f"After release N: fill the NULLs with the {_BACKFILL}: `backfill_set` = `<col> = <value>`, "
            "`backfill_where` = `<col> IS NULL`.",
            *_not_null_steps("N+1"),
        ),
    ),
    Rule(
        "will-fail-duplicates", "Duplicates where the migration adds uniqueness", "medium",
        "Rows already share the values the new unique constraint forbids: building it fails at deploy.",
        "Deduplicate the rows first (a data migration or a backfill before the release), then add the "
        "constraint.",
        level="data",
        sequence=(
            "Release N, code: stop creating duplicates (e.g. `get_or_create` / `update_or_create`, or a "
            "lookup under `select_for_update` before the INSERT).",
            f"After release N: merge or delete the duplicates in batches with the {_BACKFILL} and a "
            "`backfill_command` (a small table: a `RunPython` with `reverse_code` is enough).",
            "Release N+1: the unique constraint with the `add-unique-constraint` sequence (`CREATE UNIQUE INDEX "
            "CONCURRENTLY` with `atomic = False`, then `UNIQUE USING INDEX` in `SeparateDatabaseAndState`).",
        ),
    ),
    Rule(
        "will-fail-orphans", "Orphan rows where the migration adds a foreign key", "medium",
        "Rows reference keys that do not exist in the referenced table: validating the foreign key fails at "
        "deploy.",
        "Delete or fix the orphan rows first, or add the constraint NOT VALID and validate it after cleaning.",
        level="data",
        sequence=(
            "Release N, migration: the foreign key NOT VALID: `SeparateDatabaseAndState(state_operations=["
            "AlterField(... db_constraint=True)], database_operations=[RunSQL('ALTER TABLE \"<table>\" ADD "
            "CONSTRAINT \"<fk>\" FOREIGN KEY (\"<col>\") REFERENCES \"<parent>\" (\"id\") DEFERRABLE "
            "INITIALLY DEFERRED NOT VALID', reverse_sql='ALTER TABLE \"<table>\" DROP CONSTRAINT "
            "\"<fk>\"')])`: new rows are checked, the orphans stay.",
            f"After release N: fix the orphans with the {_BACKFILL}: e.g. `backfill_set` = `<col> = NULL`, "
            "`backfill_where` = `<col> IS NOT NULL AND NOT EXISTS (SELECT 1 FROM <parent> p WHERE p.id = "
            "<table>.<col>)`, or a `backfill_command` that deletes them.",
            "Release N+1, migration of its own: `ValidateConstraint(\"<model>\", \"<fk>\")`: SHARE UPDATE "
            "EXCLUSIVE on the table only.",
        ),
    ),
    # -- backwards plans (target_migration below the applied state) -----------------------
    Rule(
        "unapply-irreversible", "Migration cannot be unapplied", "high",
        "An operation has no reverse (RunPython without reverse_code, RunSQL without reverse_sql, or an "
        "irreversible operation): migrating backwards stops with IrreversibleError.",
        "Roll back the application only (keep the schema), or restore the snapshot taken before the deploy.",
        level="rollback",
        sequence=(
            "Roll back the application only: `safedeploy.django.rollback` with `rollback_mode=app`; the previous "
            "release runs on the expanded schema.",
            "If the schema must go back: `rollback_mode=restore` with `rollback_confirm=<database>` restores the "
            "verified snapshot the deploy took before migrating (writes since then are lost).",
            "Next time: a `reverse_code` for every `RunPython` and a `reverse_sql` for every `RunSQL` "
            "(`RunPython.noop` / `RunSQL.noop` when nothing needs undoing).",
        ),
    ),
    Rule(
        "unapply-drops-data", "Unapplying drops a column or table with its data", "high",
        "The reverse of a migration that added a column or table drops it; whatever was written there since "
        "the deploy is lost, and code still using it breaks.",
        "Prefer rolling back the application only: the newer column/table is invisible to the old code.",
        level="rollback", lock=ACCESS_EXCLUSIVE, breaks_old_code=True,
        sequence=(
            "Roll back the application only: `safedeploy.django.rollback` with `rollback_mode=app`; the previous "
            "release ignores the newer column or table and its data stays.",
            "If the column or table must go, drop it forwards in a later release: `RemoveField` / `DeleteModel` "
            f"in a migration with {_POST}, after the contract play's snapshot.",
            "If you migrate backwards anyway (`rollback_mode=migrations`), only the snapshot taken by the deploy "
            "(`safedeploy.django.pg_snapshot`) keeps the data.",
        ),
    ),
    Rule(
        "unapply-reversible", "Migration can be unapplied", "low",
        "Every operation has a reverse and none of them drops data.",
        "Nothing to do.",
        level="rollback",
    ),
]

RULES: dict[str, Rule] = {rule.id: rule for rule in _RULE_LIST}

_RE_CREATE_INDEX = re.compile(r"\bCREATE\s+(UNIQUE\s+)?INDEX\s+(CONCURRENTLY\s+)?", re.I)
_RE_INDEX_TABLE = re.compile(r'\bON\s+(?:ONLY\s+)?"?([\w.]+)"?', re.I)
_RE_ALTER_TABLE = re.compile(r'\bALTER\s+TABLE\s+(?:ONLY\s+)?(?:IF\s+EXISTS\s+)?"?([\w.]+)"?', re.I)
_RE_ALTER_TYPE = re.compile(r'\bALTER\s+COLUMN\s+"?(\w+)"?\s+(?:SET\s+DATA\s+)?TYPE\b', re.I)
_RE_SET_NOT_NULL = re.compile(r'\bALTER\s+COLUMN\s+"?(\w+)"?\s+SET\s+NOT\s+NULL\b', re.I)
_RE_ADD_CONSTRAINT = re.compile(r"\bADD\s+CONSTRAINT\s+\S+\s+(FOREIGN\s+KEY|CHECK|UNIQUE|PRIMARY\s+KEY|EXCLUDE)", re.I)
_RE_NOT_VALID = re.compile(r"\bNOT\s+VALID\b", re.I)
_RE_DESTRUCTIVE = re.compile(
    r"\b(DROP\s+(TABLE|COLUMN|SCHEMA|VIEW)|TRUNCATE|RENAME\s+(COLUMN|TO)|ALTER\s+TABLE\s+\S+\s+RENAME)\b",
    re.I,
)
_RE_DATA_CHANGE = re.compile(
    r'\b(UPDATE\s+(?:ONLY\s+)?"?([\w.]+)"?\s+SET|DELETE\s+FROM\s+(?:ONLY\s+)?"?([\w.]+)"?)', re.I
)
_RE_DROP_INDEX = re.compile(r"\bDROP\s+INDEX\s+(CONCURRENTLY\s+)?", re.I)
_RE_CONCURRENTLY = re.compile(r"\b(CREATE\s+(UNIQUE\s+)?INDEX|DROP\s+INDEX|REINDEX\b.*)\s+CONCURRENTLY\b", re.I | re.S)
_RE_ADD_PRIMARY_KEY = re.compile(
    r"\bADD\s+(CONSTRAINT\s+\S+\s+)?PRIMARY\s+KEY\b|\bADD\s+COLUMN\b[^;]*\bPRIMARY\s+KEY\b", re.I
)
_RE_INLINE_FK = re.compile(r"\bADD\s+COLUMN\b[^;]*\bREFERENCES\b", re.I)
_RE_INLINE_UNIQUE = re.compile(r"\bADD\s+COLUMN\b[^;]*\bUNIQUE\b", re.I)
_RE_VOLATILE_DEFAULT = re.compile(
    r"\bADD\s+COLUMN\b[^;]*\bDEFAULT\b[^;]*\b(gen_random_uuid|uuid_generate_v\d\w*|random|clock_timestamp|"
    r"timeofday|nextval)\s*\(",
    re.I,
)
_RE_RENAME_COLUMN = re.compile(r"\bRENAME\s+COLUMN\b", re.I)
# ADD CONSTRAINT ... UNIQUE USING INDEX: the index was built before (CONCURRENTLY); no build under the lock.
_RE_UNIQUE_USING_INDEX = re.compile(r"\bUNIQUE\s+USING\s+INDEX\b", re.I)
# A CHECK (col IS NOT NULL) lets PostgreSQL 12+ skip SET NOT NULL's scan once it is validated.
_RE_CHECK_NOT_NULL = re.compile(
    r'\bADD\s+CONSTRAINT\s+"?(\w+)"?\s+CHECK\s*\(\s*\(?\s*"?(\w+)"?\s+IS\s+NOT\s+NULL\s*\)?\s*\)', re.I
)
_RE_VALIDATE_CONSTRAINT = re.compile(r'\bVALIDATE\s+CONSTRAINT\s+"?(\w+)"?', re.I)
_RE_DROP_CONSTRAINT = re.compile(r'\bDROP\s+CONSTRAINT\s+(?:IF\s+EXISTS\s+)?"?(\w+)"?', re.I)
# Rules whose verdict means "a lock that blocks writes, held while the statement works".
_LOCK_RULES = {
    "create-index-blocking", "alter-column-type", "alter-field-set-not-null", "add-constraint-validating",
    "add-unique-constraint", "add-primary-key", "add-column-volatile-db-default", "drop-index-blocking",
    "raw-sql-data-change",
}
_RE_VARCHAR = re.compile(r"^varchar\((\d+)\)$|^character varying\((\d+)\)$", re.I)


def _plain(name: str | None) -> str | None:
    return name.split(".")[-1] if name else name


def max_risk(risks) -> str:
    best = "none"
    for risk in risks:
        if RISK_RANK.get(risk, 0) > RISK_RANK[best]:
            best = risk
    return best


def _mib(size) -> str:
    return f"{(size or 0) / 1024**2:,.1f} MiB"


def _stats_text(table: str, stats: dict) -> str:
    rows = stats.get("rows")
    rows_text = "row count unknown" if rows is None or rows < 0 else f"~{rows:,} rows"
    text = f"{table}: {rows_text}, {_mib(stats.get('bytes'))}"
    if stats.get("writes_per_second") is not None:
        text += f", {stats['writes_per_second']:,.1f} writes/s"
    return text


def grade(
    rule: Rule, table: str | None, tables: dict, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> tuple[str, str]:
    """Risk of ``rule`` on ``table`` and the sentence that says which numbers decided it.

    Size-sensitive rules follow the touched table: high from ``large_table_rows`` rows or
    ``large_table_bytes`` bytes (or, when enabled, ``busy_table_writes_per_second`` on a table
    that is not tiny), low up to ``tiny_table_rows`` rows, the rule's own risk in between.
    """
    if rule.breaks_old_code and rule.risk == "high":
        return "high", "backward-incompatible with the code still serving during the rollout: high at any size"
    if not rule.size_sensitive:
        return rule.risk, f"{rule.risk} whatever the table size"
    if not table:
        return rule.risk, f"no table to measure: {rule.risk}"
    stats = tables.get(table)
    if not stats:
        return rule.risk, f"{table}: size unknown (not in the database yet or not found): {rule.risk}"
    t = thresholds
    rows = stats.get("rows")
    rows = None if rows is None or rows < 0 else rows
    size = stats.get("bytes") or 0
    writes = stats.get("writes_per_second")
    numbers = _stats_text(table, stats)
    if rows is not None and rows >= t.large_table_rows:
        return "high", f"{numbers}: rows >= large_table_rows {t.large_table_rows:,}"
    if size >= t.large_table_bytes:
        return "high", f"{numbers}: size >= large_table_bytes {_mib(t.large_table_bytes)}"
    if rows is not None and rows <= t.tiny_table_rows:
        return "low", f"{numbers}: rows <= tiny_table_rows {t.tiny_table_rows:,}"
    if t.busy_table_writes_per_second and writes is not None and writes >= t.busy_table_writes_per_second:
        return "high", (
            f"{numbers}: writes/s >= busy_table_writes_per_second {t.busy_table_writes_per_second:,} on a table "
            f"above tiny_table_rows {t.tiny_table_rows:,}"
        )
    return rule.risk, (
        f"{numbers}: between tiny_table_rows {t.tiny_table_rows:,} and large_table_rows {t.large_table_rows:,}"
    )


def verdict(
    rule_id: str,
    *,
    table: str | None = None,
    tables: dict | None = None,
    detail: str | None = None,
    statement: str | None = None,
    lock: str | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> dict:
    """One verdict: the rule's data, the graded risk and the numbers that decided it."""
    rule = RULES[rule_id]
    tables = tables or {}
    risk, decided_by = grade(rule, table, tables, thresholds)
    result = {
        "rule": rule.id,
        "risk": risk,
        "title": rule.title,
        "why": rule.why,
        "alternative": rule.alternative,
        "sequence": list(rule.sequence),
        "lock": lock or rule.lock,
        "work": rule.work,
        "backward_incompatible": rule.breaks_old_code,
        "table": table,
        "decided_by": decided_by,
    }
    if statement:
        result["statement"] = _short(statement, 400)
    if table and table in tables:
        result["table_stats"] = dict(tables[table])
    notes = [n for n in (detail, decided_by if rule.size_sensitive else None) if n]
    if notes:
        result["detail"] = "; ".join(notes)
    return result


def _statement_table(statement: str) -> str | None:
    if _RE_CREATE_INDEX.search(statement):
        match = _RE_INDEX_TABLE.search(statement)
    else:
        match = _RE_ALTER_TABLE.search(statement)
    return _plain(match.group(1)) if match else None


def _no_rewrite_type_change(before: dict | None, after: dict | None) -> bool:
    if not before or not after:
        return False
    old, new = (before.get("db_type") or "").strip(), (after.get("db_type") or "").strip()
    old_match = _RE_VARCHAR.match(old)
    if not old_match:
        return False
    if new.lower() == "text":
        return True
    new_match = _RE_VARCHAR.match(new)
    if not new_match:
        return False
    return int(new_match.group(1) or new_match.group(2)) >= int(old_match.group(1) or old_match.group(2))


def judge_sql(
    statements: list[str],
    new_tables: set[str],
    tables: dict,
    *,
    raw: bool,
    op: dict | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    facts: dict | None = None,
) -> list[dict]:
    """PostgreSQL-level verdicts for SQL statements; ``raw`` is True for RunSQL text.

    ``facts`` (see ``plan_facts``) carries what earlier statements of the plan established, and is
    updated with what these statements establish.
    """
    v = functools.partial(verdict, tables=tables, thresholds=thresholds)
    verdicts = []
    for statement in statements:
        table = _statement_table(statement)
        existing = table is not None and table not in new_tables
        index = _RE_CREATE_INDEX.search(statement)
        if index and not index.group(2) and existing:
            verdicts.append(v("create-index-blocking", table=table, statement=statement))
        if _RE_ALTER_TYPE.search(statement) and existing:
            if op and _no_rewrite_type_change(op.get("field_before"), op.get("field")):
                verdicts.append(v("alter-column-type-no-rewrite", table=table))
            else:
                verdicts.append(v("alter-column-type", table=table, statement=statement))
        set_not_null = _RE_SET_NOT_NULL.search(statement)
        if set_not_null and existing and not _proven_not_null(facts, table, set_not_null.group(1)):
            verdicts.append(v("alter-field-set-not-null", table=table, statement=statement))
        drop_index = _RE_DROP_INDEX.search(statement)
        if drop_index and not drop_index.group(1):
            verdicts.append(v("drop-index-blocking", statement=statement))
        constraint = _RE_ADD_CONSTRAINT.search(statement)
        if existing and _RE_ADD_PRIMARY_KEY.search(statement):
            verdicts.append(v("add-primary-key", table=table, statement=statement))
        elif existing and (_RE_INLINE_FK.search(statement) or _RE_INLINE_UNIQUE.search(statement)):
            rule_id = "add-constraint-validating" if _RE_INLINE_FK.search(statement) else "add-unique-constraint"
            verdicts.append(v(rule_id, table=table, statement=statement, lock=ACCESS_EXCLUSIVE))
        elif constraint and existing:
            kind = constraint.group(1).upper()
            if kind.startswith("UNIQUE") and _RE_UNIQUE_USING_INDEX.search(statement):
                pass  # the index exists already (built CONCURRENTLY): a catalog change
            elif kind.startswith("UNIQUE") or kind.startswith("EXCLUDE"):
                verdicts.append(v("add-unique-constraint", table=table, statement=statement))
            elif not _RE_NOT_VALID.search(statement):
                lock = None if kind.startswith("FOREIGN") else ACCESS_EXCLUSIVE  # CHECK: ALTER TABLE's default
                verdicts.append(v("add-constraint-validating", table=table, statement=statement, lock=lock))
        if raw and existing and _RE_VOLATILE_DEFAULT.search(statement):
            verdicts.append(
                v("add-column-volatile-db-default", table=table, statement=statement)
            )
        if not raw and existing and op and op.get("type") == "AlterField" and _RE_RENAME_COLUMN.search(statement):
            verdicts.append(v("rename-field", table=table, statement=statement))
        if raw:
            if _RE_DESTRUCTIVE.search(statement):
                verdicts.append(v("raw-sql-destructive", statement=statement))
            data = _RE_DATA_CHANGE.search(statement)
            if data:
                data_table = _plain(data.group(2) or data.group(3))
                if data_table not in new_tables:
                    verdicts.append(v("raw-sql-data-change", table=data_table, statement=statement))
        if facts is not None and table:
            _learn(facts, table, statement)
    return verdicts


def plan_facts() -> dict:
    """What the statements of a plan establish for the later ones (``judge_sql``'s ``facts``).

    ``checks``: NOT VALID ``CHECK (col IS NOT NULL)`` constraints, (table, name) -> (column, migration);
    ``not_null``: (table, column) -> constraint name, for such a CHECK that is validated, so that a
    later SET NOT NULL skips its scan (PostgreSQL 12+). ``migration`` is the migration being judged.
    """
    return {"migration": None, "checks": {}, "not_null": {}}


def _learn(facts: dict, table: str, statement: str) -> None:
    check = _RE_CHECK_NOT_NULL.search(statement)
    if check:
        name, column = check.group(1), check.group(2)
        if _RE_NOT_VALID.search(statement):
            facts["checks"][(table, name)] = (column, facts.get("migration"))
        else:  # validated as it is added (and graded add-constraint-validating for that)
            facts["not_null"][(table, column)] = name
    validate = _RE_VALIDATE_CONSTRAINT.search(statement)
    if validate and (table, validate.group(1)) in facts["checks"]:
        column, added_in = facts["checks"][(table, validate.group(1))]
        # In the migration that added it, the ADD's ACCESS EXCLUSIVE lock is still held during the scan:
        # that is not the safe sequence, so it proves nothing.
        if added_in != facts.get("migration"):
            facts["not_null"][(table, column)] = validate.group(1)
    drop = _RE_DROP_CONSTRAINT.search(statement)
    if drop:
        facts["checks"].pop((table, drop.group(1)), None)
        for key, name in list(facts["not_null"].items()):
            if key[0] == table and name == drop.group(1):
                del facts["not_null"][key]


def _proven_not_null(facts: dict | None, table: str | None, column: str) -> bool:
    return bool(facts) and (table, column) in facts["not_null"]


def _short(statement: str, limit: int = 160) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def judge_operation(
    op: dict,
    tables: dict | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    facts: dict | None = None,
) -> list[dict]:
    """All verdicts for one operation's facts (as reported by the helper); ``facts``: see ``plan_facts``."""
    tables = tables or {}
    v = functools.partial(verdict, tables=tables, thresholds=thresholds)
    kind = op.get("type")
    table = op.get("table")
    new_tables = set(op.get("new_tables") or [])
    is_new = bool(op.get("created_in_plan"))
    field = op.get("field") or {}
    verdicts: list[dict] = []

    if kind == "CreateModel":
        verdicts.append(v("create-table"))
    elif kind == "AddField":
        if is_new:
            verdicts.append(v("add-column-new-table"))
        elif field.get("null"):
            verdicts.append(v("add-nullable-column"))
        elif field.get("db_default"):
            if field.get("db_default_kind") == "expression":
                verdicts.append(v("add-column-volatile-db-default", table=table))
            else:
                verdicts.append(v("add-column-db-default"))
        elif field.get("has_default") or op.get("preserve_default") is False:
            verdicts.append(v("not-null-django-default", table=table))
        elif not field.get("primary_key"):
            verdicts.append(v("not-null-no-default", table=table))
    elif kind == "RenameModel" and op.get("new_table") and op.get("new_table") == table:
        pass  # Meta.db_table is kept: the table is not renamed (judged from its SQL, if any)
    elif kind in ("RemoveField", "DeleteModel", "RenameField", "RenameModel", "AlterModelTable"):
        if is_new:
            verdicts.append(v("drop-on-new-table", detail=f"{kind} on {table}"))
        else:
            rule_id = {
                "RemoveField": "remove-field",
                "DeleteModel": "delete-model",
                "RenameField": "rename-field",
                "RenameModel": "rename-model",
                "AlterModelTable": "alter-model-table",
            }[kind]
            verdicts.append(v(rule_id, table=table))
    elif kind == "RunPython":
        verdicts.append(v("run-python"))
        if not (op.get("run_python") or {}).get("reverse_code_given"):
            verdicts.append(v("run-python-irreversible"))
    elif kind == "RunSQL" and not (op.get("run_sql") or {}).get("reverse_sql_given"):
        verdicts.append(v("run-sql-irreversible"))

    if op.get("sql_error"):
        verdicts.append(v("sql-depends-on-live-schema", detail=op["sql_error"]))
    for check in op.get("prechecks") or []:
        if check.get("status") == "fail":
            verdicts.append(v(f"will-fail-{check['kind']}", table=check.get("table"), detail=check.get("message")))

    # SeparateDatabaseAndState's database operations are hand-picked: judge their SQL like raw SQL.
    raw = kind in ("RunSQL", "SeparateDatabaseAndState")
    statements = (op.get("run_sql") or {}).get("sql", []) if kind == "RunSQL" else op.get("sql") or []
    verdicts.extend(judge_sql(statements, new_tables, tables, raw=raw, op=op, thresholds=thresholds, facts=facts))

    if not verdicts and kind != "RunPython" and any(s.strip() for s in statements):
        verdicts.append(v("catalog-change"))

    if (
        not verdicts
        and op.get("reduces_to_sql", True)
        and not op.get("sql")
        and not op.get("sql_error")
        and kind not in ("RunSQL", "RunPython")
    ):
        verdicts.append(v("state-only"))
    return verdicts


def _op_statements(op: dict) -> list[str]:
    return list(op.get("sql") or []) + list((op.get("run_sql") or {}).get("sql") or [])


def _biggest(names, tables: dict) -> str | None:
    known = [n for n in names if n in tables]
    if not known:
        return next(iter(sorted(names)), None)
    return max(known, key=lambda n: (tables[n].get("rows") or 0, tables[n].get("bytes") or 0))


# Expand steps (the new code needs them, the old code tolerates them) and contract steps (they remove
# what the old code uses) of the expand/contract pattern.
_EXPAND_OPERATIONS = {"CreateModel", "AddField", "AddIndex", "AddIndexConcurrently", "AddConstraint"}
_CONTRACT_OPERATIONS = {"RemoveField", "DeleteModel"}
# In the post-deploy phase no old code runs any more: what only broke the old code is graded for what is
# left of it (removing data nobody reads, a scan under lock, nothing).
_POST_PHASE_RISK = {
    "remove-field": ("medium", "post-deploy phase: no code uses the column any more; its data is removed"),
    "delete-model": ("medium", "post-deploy phase: no code uses the table any more; its data is removed"),
    "not-null-django-default": ("low", "post-deploy phase: every running host fills the column"),
}


def _post_phase(item: dict, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict:
    """A verdict of a migration that runs after every host runs the new code."""
    if item["rule"] in _POST_PHASE_RISK:
        risk, why = _POST_PHASE_RISK[item["rule"]]
        return dict(item, risk=risk, decided_by=why, backward_incompatible=False)
    if item["rule"] == "alter-field-set-not-null":  # no old code writes NULL: what is left is the scan
        stats = item.get("table_stats") or {}
        rows = stats.get("rows") or 0
        big = rows >= thresholds.large_table_rows or (stats.get("bytes") or 0) >= thresholds.large_table_bytes
        numbers = f" ({_stats_text(item['table'], stats)})" if stats else ""
        return dict(
            item,
            risk="high" if big else "medium",
            backward_incompatible=False,
            decided_by="post-deploy phase: no old code writes NULL; SET NOT NULL still scans the table under "
            "ACCESS EXCLUSIVE" + numbers,
        )
    return item


def _migration_verdicts(
    migration: dict, operations: list[dict], tables: dict, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> list[dict]:
    """Rules about the migration as a whole (its transaction), from its judged operations."""
    v = functools.partial(verdict, tables=tables, thresholds=thresholds)
    out = []
    kinds = {op.get("type") for op in operations if not op.get("created_in_plan")}
    if kinds & _EXPAND_OPERATIONS and kinds & _CONTRACT_OPERATIONS:
        steps = ", ".join(sorted(kinds & (_EXPAND_OPERATIONS | _CONTRACT_OPERATIONS)))
        out.append(v("mixed-phase-migration", detail=steps))
    atomic = migration.get("atomic", True)
    working = [op for op in operations if op.get("type") == "RunPython" or any(s.strip() for s in _op_statements(op))]
    if not atomic:
        rule_id = "non-atomic-partial-apply" if len(working) > 1 else "non-atomic-migration"
        out.append(v(rule_id))
        return out
    if any(_RE_CONCURRENTLY.search(s) for op in operations for s in _op_statements(op)):
        out.append(v("concurrently-in-atomic"))
    # DDL on a table the old code uses + a data step, in one transaction.
    ddl_tables: set[str] = set()
    data_steps = 0
    for op in operations:
        existing = set(op.get("tables") or []) - set(op.get("new_tables") or [])
        if op.get("type") == "RunPython" or any(v["rule"] == "raw-sql-data-change" for v in op["verdicts"]):
            data_steps += 1
        elif op.get("type") != "RunSQL" and op.get("sql") and existing:
            ddl_tables |= existing
    if data_steps and ddl_tables:
        table = _biggest(ddl_tables, tables)
        out.append(v("dml-with-ddl", table=table))
    # Several lock-taking statements that do real work, held together until COMMIT.
    lockers = [
        op for op in operations
        if any(v["rule"] in _LOCK_RULES and RISK_RANK[v["risk"]] >= RISK_RANK["medium"] for v in op["verdicts"])
    ]
    if len(lockers) > 1:
        locked = set()
        for op in lockers:
            locked |= set(op.get("tables") or []) - set(op.get("new_tables") or [])
        out.append(v("several-strong-locks", table=_biggest(locked, tables)))
    return out


def judge_migration(
    migration: dict,
    tables: dict | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    facts: dict | None = None,
) -> dict:
    """Judge every operation; returns the migration with risk, verdicts, sql and reversibility filled in.

    ``facts`` (``plan_facts()``), shared by the migrations of one plan in order, lets a step rely on what
    an earlier migration of the plan did (a validated CHECK (col IS NOT NULL) before SET NOT NULL).
    """
    tables = tables or {}
    if migration.get("direction") == "backwards":
        return _judge_backwards(migration, tables, thresholds)
    if facts is not None:
        facts["migration"] = migration.get("id")
    all_verdicts = []
    sql = []
    errors = []
    operations = []
    for op in migration.get("operations", []):
        op_verdicts = judge_operation(op, tables, thresholds, facts)
        if migration.get("phase") == "post":
            op_verdicts = [_post_phase(item, thresholds) for item in op_verdicts]
        judged = dict(op)
        judged["verdicts"] = op_verdicts
        judged["risk"] = max_risk(v["risk"] for v in op_verdicts)
        operations.append(judged)
        for item in op_verdicts:
            all_verdicts.append(dict(item, operation=op.get("index")))
        sql.append(f"-- {op.get('description')}")
        sql.extend(op.get("sql") or [])
        if op.get("sql_error"):
            errors.append(f"operation {op.get('index')} ({op.get('type')}): {op['sql_error']}")
    all_verdicts.extend(dict(v, operation=None) for v in _migration_verdicts(migration, operations, tables, thresholds))
    return _judged(migration, operations, all_verdicts, sql, errors)


def _judged(migration: dict, operations: list, verdicts: list, sql: list, errors: list) -> dict:
    result = dict(migration)
    result["operations"] = operations
    result["verdicts"] = verdicts
    result["risk"] = max_risk(item["risk"] for item in verdicts)
    result["reversible"] = all(op.get("reversible", True) for op in operations)
    result["sql"] = sql
    result["sql_error"] = "; ".join(errors) or None
    return result


_RE_DROP_DATA = re.compile(r"\bDROP\s+(TABLE|COLUMN)\b", re.I)


def _judge_backwards(migration: dict, tables: dict, thresholds: Thresholds) -> dict:
    """Verdicts for unapplying a migration: can it be reversed, and what does reversing destroy."""
    v = functools.partial(verdict, tables=tables, thresholds=thresholds)
    operations, all_verdicts, sql, errors = [], [], [], []
    for op in migration.get("operations", []):
        op_verdicts = []
        statements = list(op.get("sql") or [])
        if not op.get("reversible", True):
            op_verdicts.append(v("unapply-irreversible", detail=op.get("sql_error") or op.get("description")))
        elif op.get("sql_error"):
            op_verdicts.append(v("sql-depends-on-live-schema", detail=op["sql_error"]))
            errors.append(f"operation {op.get('index')} ({op.get('type')}): {op['sql_error']}")
        if any(_RE_DROP_DATA.search(s) for s in statements):
            table = op.get("table") or next(iter(op.get("tables") or []), None)
            op_verdicts.append(v("unapply-drops-data", table=table, statement=statements[0]))
        # Reversing DDL can itself take blocking locks (e.g. DROP INDEX, ADD COLUMN NOT NULL).
        op_verdicts.extend(
            item
            for item in judge_sql(statements, set(), tables, raw=False, op=None, thresholds=thresholds)
            if item["rule"] not in ("rename-field",)
        )
        judged = dict(op, verdicts=op_verdicts, risk=max_risk(item["risk"] for item in op_verdicts))
        operations.append(judged)
        all_verdicts.extend(dict(item, operation=op.get("index")) for item in op_verdicts)
        sql.append(f"-- (reverse) {op.get('description')}")
        sql.extend(statements)
    if not any(item["rule"] in ("unapply-irreversible", "unapply-drops-data") for item in all_verdicts):
        all_verdicts.append(dict(v("unapply-reversible"), operation=None))
    return _judged(migration, operations, all_verdicts, sql, errors)


# -- gate ------------------------------------------------------------------------


WAIVER_FIELDS = ("migration", "rule", "reason", "approved_by", "expires")


def parse_waivers(waivers: list[dict] | None) -> tuple[list[dict], list[dict]]:
    """Split waivers into complete ones (with a parsed ``expires_date``) and invalid ones.

    A waiver counts only when it names the migration, the rule, a reason, who approved it and an
    expiry date; an invalid one is kept with ``problems`` so that the report can say why it did
    not count.
    """
    complete, invalid = [], []
    for position, waiver in enumerate(waivers or [], start=1):
        if not isinstance(waiver, dict):
            invalid.append({"position": position, "problems": [f"not a mapping: {waiver!r}"]})
            continue
        problems = []
        migration = str(waiver.get("migration") or "").strip()
        rule = str(waiver.get("rule") or "").strip()
        reason = str(waiver.get("reason") or "").strip()
        approved_by = str(waiver.get("approved_by") or "").strip()
        expires = waiver.get("expires")
        if not re.fullmatch(r"\w+\.\w+", migration):
            problems.append(f"migration must be 'app_label.migration_name', got {migration!r}")
        if not rule:
            problems.append("rule is missing (name the rule id the waiver accepts)")
        elif rule not in RULES:
            problems.append(f"unknown rule {rule!r} (see docs/rules.md)")
        if not reason:
            problems.append("reason is missing")
        if not approved_by:
            problems.append("approved_by is missing (who accepted the risk)")
        expires_date = None
        if isinstance(expires, datetime.date):
            expires_date = expires
        else:
            try:
                expires_date = datetime.date.fromisoformat(str(expires or "").strip())
            except ValueError:
                problems.append(f"expires must be a date YYYY-MM-DD, got {expires!r}")
        entry = {
            "position": position,
            "migration": migration,
            "rule": rule or None,
            "reason": reason,
            "approved_by": approved_by,
            "expires": expires_date.isoformat() if expires_date else (str(expires) if expires else None),
        }
        if problems:
            invalid.append(dict(entry, problems=problems))
        else:
            complete.append(dict(entry, expires_date=expires_date))
    return complete, invalid


def _public(waiver: dict) -> dict:
    return {k: waiver.get(k) for k in ("position", *WAIVER_FIELDS)}


def gate(
    plan: list[dict],
    threshold: str,
    waivers: list[dict],
    today: datetime.date,
    invalid_waivers: list[dict] | None = None,
) -> dict:
    """Block when a verdict is riskier than ``threshold`` and no valid waiver covers it.

    A waiver is valid through its ``expires`` day; expired and incomplete waivers are reported
    and ignored.
    """
    if threshold not in RISK_RANK:
        raise ValueError(f"unknown risk level {threshold!r}")
    invalid_waivers = invalid_waivers or []
    valid = [w for w in waivers if w["expires_date"] >= today]
    expired = [w for w in waivers if w["expires_date"] < today]
    used: set[int] = set()
    reasons, waived = [], []
    for migration in plan:
        for item in migration.get("verdicts", []):
            if RISK_RANK[item["risk"]] <= RISK_RANK[threshold]:
                continue
            where = migration["id"]
            if item.get("operation") is not None:
                where += f" operation {item['operation']}"

            def covers(w, item=item, migration=migration):
                return w.get("migration") == migration["id"] and w.get("rule") == item["rule"]

            waiver = next((w for w in valid if covers(w)), None)
            if waiver:
                used.add(waiver["position"])
                waived.append(
                    {
                        "migration": migration["id"],
                        "operation": item.get("operation"),
                        "rule": item["rule"],
                        "risk": item["risk"],
                        "reason": waiver["reason"],
                        "approved_by": waiver["approved_by"],
                        "expires": waiver["expires"],
                    }
                )
                continue
            text = f"{where}: {item['rule']} is {item['risk']} (above {threshold}): {item['title']}"
            for w in expired:
                if covers(w):
                    text += f" (waiver {w['position']} expired on {w['expires']})"
            for w in invalid_waivers:  # meant for it: same migration, and this rule or a wrong/missing one
                if w.get("migration") == migration["id"] and w.get("rule") in (item["rule"], None) or (
                    w.get("migration") == migration["id"] and w.get("rule") not in RULES
                ):
                    text += f" (waiver {w['position']} does not count: {'; '.join(w['problems'])})"
            reasons.append(text)
    return {
        "max_risk": threshold,
        "blocked": bool(reasons),
        "reasons": reasons,
        "waived": waived,
        "expired_waivers": [_public(w) for w in expired],
        "invalid_waivers": [dict(_public(w), problems=w["problems"]) for w in invalid_waivers],
        "unused_waivers": [_public(w) for w in valid if w["position"] not in used],
    }


def assess_plan(
    reply: dict,
    threshold: str,
    waivers: list[dict],
    today: datetime.date,
    *,
    invalid_waivers: list[dict] | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> dict:
    """Turn the helper's plan reply into the module's result (without ``changed``)."""
    tables = reply.get("tables") or {}
    facts = plan_facts()
    plan = [judge_migration(m, tables, thresholds, facts) for m in reply.get("plan") or []]
    prechecks = [
        dict(check, migration=m["id"], operation=op.get("index"))
        for m in plan
        for op in m.get("operations", [])
        for check in op.get("prechecks") or []
    ]
    result = {
        "plan": plan,
        "pending": [m["id"] for m in plan],
        "direction": reply.get("direction") or ("forwards" if plan else "none"),
        "migration_target": reply.get("migration_target"),
        "plan_digest": reply.get("plan_digest"),
        "plan_digests": reply.get("plan_digests") or {},
        "highest_risk": max_risk(m["risk"] for m in plan),
        "missing_migrations": {
            app: [m["name"] if isinstance(m, dict) else m for m in items]
            for app, items in (reply.get("missing_migrations") or {}).items()
        },
        "target": reply.get("target") or {},
        "tables": tables,
        "thresholds": dataclasses.asdict(thresholds),
        "prechecks": prechecks if reply.get("prechecks_ran") else None,
        "gate": gate(plan, threshold, waivers, today, invalid_waivers),
    }
    result["report_markdown"] = render_markdown(result)
    return result


# -- reports -----------------------------------------------------------------------


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _verdict_line(migration: dict, item: dict) -> str:
    where = migration["id"] + (f" op {item['operation']}" if item.get("operation") is not None else "")
    line = f"{where}: `{item['rule']}` **{item['risk']}** ({item['title']}); lock {item.get('lock', '?')}"
    if item.get("work") and item["work"] != "none":
        line += f", {item['work']}"
    if item.get("backward_incompatible"):
        line += ", breaks the old code"
    line += f". Decided by: {item.get('decided_by', '-')}. Safer: {item['alternative']}"
    return line


def _finding_lines(migration: dict, item: dict, shown: set[str]) -> list[str]:
    """A finding as a list item, with the rule's safe sequence as numbered steps the first time it appears."""
    line = "- " + _cell(_verdict_line(migration, item))
    steps = item.get("sequence") or []
    if not steps:
        return [line]
    if item["rule"] in shown:
        return [line + f" Safe sequence: as for `{item['rule']}` above."]
    shown.add(item["rule"])
    return [line + " Safe sequence:"] + [f"  {number}. {_cell(step)}" for number, step in enumerate(steps, start=1)]


def render_markdown(result: dict) -> str:
    target = result.get("target") or {}
    gate_info = result.get("gate") or {}
    plan = result.get("plan") or []
    direction = result.get("direction") or "forwards"
    what = "migration(s) to unapply" if direction == "backwards" else "pending migration(s)"
    lines = [
        f"## Migration plan for {target.get('database', '?')} on {target.get('host', '?')}:{target.get('port', '?')}",
        "",
        f"{len(plan)} {what}; highest risk: **{result.get('highest_risk', 'none')}**; "
        f"gate (max_risk {gate_info.get('max_risk')}): **{'BLOCKED' if gate_info.get('blocked') else 'passed'}**.",
        "",
    ]
    if plan:
        lines += [
            "| # | Migration | Risk | Reversible | Operations | Verdicts |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for number, migration in enumerate(plan, start=1):
            ops = ", ".join(op.get("type", "?") for op in migration.get("operations", []))
            verdicts = "; ".join(
                f"{v['rule']} ({v['risk']})" for v in migration.get("verdicts", []) if v["risk"] != "none"
            )
            lines.append(
                f"| {number} | {_cell(migration['id'])} | {migration['risk']} | "
                f"{'yes' if migration.get('reversible') else 'no'} | {_cell(ops)} | {_cell(verdicts or '-')} |"
            )
        lines.append("")
    shown: set[str] = set()
    findings = [
        _finding_lines(migration, item, shown)
        for migration in plan
        for item in migration.get("verdicts", [])
        if RISK_RANK[item["risk"]] >= RISK_RANK["medium"]
    ]
    prechecks = [
        f"{c['migration']} op {c['operation']}: {c['kind']} on {c['table']}: {c['status']} - {c.get('message', '')}"
        for c in result.get("prechecks") or []
    ]
    sections = (
        ("Blocking", gate_info.get("reasons")),
        ("Findings (medium and high)", findings),  # each a list of lines already
        ("Data pre-checks", prechecks),
        (
            "Waived",
            [
                f"{w['migration']}: {w['rule']} ({w['risk']}) - {w['reason']}; approved by {w['approved_by']} "
                f"(until {w['expires']})"
                for w in gate_info.get("waived") or []
            ],
        ),
        (
            "Expired waivers (not applied)",
            [f"waiver {w['position']} {w['migration']}: {w['rule']} - expired {w['expires']}"
             for w in gate_info.get("expired_waivers") or []],
        ),
        (
            "Incomplete waivers (not applied)",
            [f"waiver {w['position']} {w.get('migration') or '?'}: {'; '.join(w['problems'])}"
             for w in gate_info.get("invalid_waivers") or []],
        ),
        (
            "Unused waivers",
            [f"waiver {w['position']} {w['migration']}: {w['rule']} (nothing in this plan needs it)"
             for w in gate_info.get("unused_waivers") or []],
        ),
        ("SQL that depends on the live schema", [f"{m['id']}: {m['sql_error']}" for m in plan if m.get("sql_error")]),
        (
            "Missing migrations",
            [f"{app}: {', '.join(names)}" for app, names in (result.get("missing_migrations") or {}).items()],
        ),
    )
    for title, items in sections:
        if items:
            lines.append(f"**{title}:**")
            for item in items:
                lines.extend(item if isinstance(item, list) else [f"- {_cell(item)}"])
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def rules_markdown(examples: dict[str, str] | None = None) -> str:
    """docs/rules.md, generated from the registry (devtools/gen_rules_doc.py).

    ``examples`` maps a rule id to a migration snippet (the corpus case that tests it).
    """
    examples = examples or {}
    t = DEFAULT_THRESHOLDS
    lines = [
        "# Migration risk rules",
        "",
        "Generated from `plugins/module_utils/_rules.py` and the labelled corpus (`tests/corpus/cases/`) by",
        "`devtools/gen_rules_doc.py`; do not edit by hand.",
        "",
        "`django_migration_plan` judges every operation of the plan with these rules. Rule ids are what",
        "waivers name (`waivers: [{migration: app.0007_x, rule: <id>, reason: ..., approved_by: ...,",
        "expires: YYYY-MM-DD}]`).",
        "",
        "Size-sensitive rules are graded by the table they touch (`thresholds` option): **high** from "
        f"`large_table_rows` ({t.large_table_rows:,}) rows or `large_table_bytes` ({t.large_table_bytes // 1024**3} "
        f"GiB), **low** up to `tiny_table_rows` ({t.tiny_table_rows:,}) rows, the listed risk in between; with "
        "`busy_table_writes_per_second` set, a table written that often (and not tiny) is also high. A table "
        "created earlier in the same plan counts as empty. Every verdict says which numbers decided it "
        "(`decided_by`).",
        "",
        "Levels: `django` rules judge the operation, `postgresql` rules the SQL it emits (RunSQL text included), "
        "`data` rules come from the opt-in pre-checks (`prechecks: true`), `rollback` rules judge backwards "
        "plans (`target_migration`).",
        "",
        "| Rule | Level | Risk | Size-sensitive | Lock | Work under the lock | Breaks old code | Title |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rule in _RULE_LIST:
        lines.append(
            f"| [`{rule.id}`](#{rule.id}) | {rule.level} | {rule.risk} | {'yes' if rule.size_sensitive else 'no'} "
            f"| {rule.lock} | {rule.work} | {'yes' if rule.breaks_old_code else 'no'} | {_cell(rule.title)} |"
        )
    lines.append("")
    lines += [
        "## Safe sequences",
        "",
        "Every rule above low risk gives, besides its one-line *Safer* hint, a *safe sequence*: the ordered "
        "steps that make the same change without the hazard. Each verdict carries them as `sequence` (a list "
        "of strings), and the Markdown report numbers them under the first finding of each rule. In the steps:",
        "",
        "- **Release N** is one deploy of `playbooks/deploy.yml`: its pre-deploy migrations, the rollout of "
        "its code, then its post-deploy migrations.",
        "- A **pre-deploy migration** is an ordinary one (phase `pre`, applied before the rollout, while the "
        "old code still serves); a **post-deploy migration** has `safedeploy_phase = \"post\"` on its "
        "Migration class or is listed in `release_post_migrations`, and is applied by the contract play after "
        "a verified snapshot, once every host runs the new code (see [migrate-once.md](migrate-once.md)).",
        "- **After release N** is outside the deploy, once release N serves everywhere: backfills run with "
        "the `safedeploy.django.backfill` playbook / `safedeploy.django.django_backfill` module (see "
        "[backfill.md](backfill.md)).",
        "- Placeholders are in angle brackets: `<model>`, `<field>`, `<table>`, `<col>`, `<check>`, `<fk>`.",
        "",
        "Every sequence is written with Django's own operations: `AddIndexConcurrently`, "
        "`RemoveIndexConcurrently`, `AddConstraintNotValid` and `ValidateConstraint` from "
        "`django.contrib.postgres.operations`, plus `SeparateDatabaseAndState` and `RunSQL` (with "
        "`reverse_sql` and `state_operations`) for the few statements Django has no operation for (`CREATE "
        "UNIQUE INDEX CONCURRENTLY`, `ADD CONSTRAINT ... USING INDEX`, a foreign key added `NOT VALID`): each "
        "is one line of SQL, so the collection needs no package of migration operations of its own.",
        "",
        "The planner follows these sequences across the migrations of one plan: `SET NOT NULL` after a "
        "`CHECK (col IS NOT NULL)` constraint that one migration of the plan added `NOT VALID` and a later one "
        "validated is a "
        "`catalog-change`, and so is `ADD CONSTRAINT ... UNIQUE USING INDEX`.",
        "",
    ]
    for rule in _RULE_LIST:
        lines += [
            f"## {rule.id}",
            "",
            f"**{rule.title}** — risk **{rule.risk}**, {rule.level} level"
            + (", graded by table size." if rule.size_sensitive else "."),
            "",
            f"*Lock:* {rule.lock}; *work under it:* {rule.work}; *backward-incompatible:* "
            f"{'yes' if rule.breaks_old_code else 'no'}.",
            "",
            f"*Why:* {rule.why}",
            "",
            f"*Safer:* {rule.alternative}",
            "",
        ]
        if rule.sequence:
            lines += ["*Safe sequence:*", ""]
            lines += [f"{number}. {step}" for number, step in enumerate(rule.sequence, start=1)]
            lines.append("")
        if rule.id in examples:
            lines += ["*Example:*", "", "```python", examples[rule.id].rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"
