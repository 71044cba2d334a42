# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration risk rules: data in one registry, pure functions that apply them.

Input is what ``_django_helper`` reports about each operation of the plan
(its facts and the SQL Django would run); output is a list of verdicts
``{rule, risk, title, why, alternative}`` per operation, a risk per migration,
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
        "Add the column nullable, backfill in batches after the deploy, then add the default / NOT NULL.",
        size_sensitive=True,
        lock=ACCESS_EXCLUSIVE, work="rewrite",
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
    ),
    Rule(
        "not-null-no-default", "NOT NULL column without any default on an existing table", "high",
        "Existing rows have no value for it and the old code's INSERTs do not send it: the migration or "
        "the old code's writes fail.",
        "Add the column null=True (or with db_default), backfill, then add NOT NULL in a later release.",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
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
    ),
    Rule(
        "remove-field", "Column removed", "high",
        "The running (old) code still selects and writes this column: every query on the model fails "
        "from the moment the migration commits until the new code runs everywhere.",
        "Expand/contract: release code that no longer uses the field first (or mark it with "
        "SeparateDatabaseAndState), drop the column in a later release's post-deploy phase.",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
    ),
    Rule(
        "delete-model", "Table dropped", "high",
        "The running code still uses the model; the data is gone unless restored from a snapshot.",
        "Stop using the model in one release, drop the table in a later one, after a snapshot.",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
    ),
    Rule(
        "rename-field", "Column renamed", "high",
        "The running code uses the old column name: its queries fail until every host runs the new code.",
        "Add the new column, write both, backfill, switch reads, drop the old one in a later release "
        "(or keep the column name with db_column=...).",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
    ),
    Rule(
        "rename-model", "Table renamed", "high",
        "The running code uses the old table name: its queries fail until every host runs the new code.",
        "Keep the table name with Meta.db_table, or create a view with the old name during the rollout.",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
    ),
    Rule(
        "alter-model-table", "Table renamed (db_table changed)", "high",
        "The running code uses the old table name.",
        "Keep db_table, or add a compatibility view during the rollout.",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
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
    ),
    Rule(
        "run-python-irreversible", "RunPython without reverse_code", "medium",
        "The migration cannot be unapplied: rolling back the schema needs a snapshot restore.",
        "Give reverse_code (migrations.RunPython.noop when undoing needs no work).",
        lock="none", work="none",
    ),
    Rule(
        "run-sql-irreversible", "RunSQL without reverse_sql", "medium",
        "The migration cannot be unapplied: rolling back the schema needs a snapshot restore.",
        "Give reverse_sql (migrations.RunSQL.noop when undoing needs no work).",
        lock="none", work="none",
    ),
    Rule(
        "sql-depends-on-live-schema", "SQL cannot be rendered without the live schema", "medium",
        "Django introspects existing constraints or indexes to write this operation's SQL (e.g. "
        "unique_together / index changes, RenameIndex with old_fields), so its SQL could not be shown "
        "for this database state; it is graded from the operation only.",
        "Review the operation by hand, or plan against a copy of production with the earlier migrations applied.",
        lock="unknown", work="unknown",
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
    ),
    Rule(
        "mixed-phase-migration", "Migration mixes expand and contract steps", "medium",
        "It adds schema the new code needs and removes schema the old code uses. In the pre-deploy phase the "
        "removal breaks the old code still serving; in the post-deploy phase the addition comes after the new "
        "code already needs it.",
        "Split it: the additions in a pre-deploy migration, the removals in a later one marked "
        "safedeploy_phase = 'post'.",
        lock="none", work="none",
    ),
    Rule(
        "concurrently-in-atomic", "CONCURRENTLY inside an atomic migration", "medium",
        "CREATE/DROP INDEX CONCURRENTLY cannot run inside a transaction block: the migration fails at "
        "deploy (Django refuses AddIndexConcurrently when atomic, PostgreSQL refuses the raw SQL).",
        "Set atomic = False on the migration and keep the concurrent operation alone in it.",
        lock="none", work="none",
    ),
    Rule(
        "dml-with-ddl", "Data change in the same transaction as DDL on an existing table", "medium",
        "In an atomic migration the strong lock the DDL takes (ACCESS EXCLUSIVE for ALTER TABLE) is held "
        "until COMMIT, i.e. for the whole duration of the RunPython / UPDATE that follows or precedes it.",
        "Put schema changes and data changes in separate migrations (or run the backfill after the deploy).",
        size_sensitive=True,
        lock=ACCESS_EXCLUSIVE, work="data change",
    ),
    Rule(
        "several-strong-locks", "Several strong-lock statements in one transaction", "medium",
        "Each lock is held until the migration commits: writes wait for the sum of all the steps, and "
        "locks taken on several tables in an order the application does not use can deadlock.",
        "Split the migration so that each lock-taking step commits on its own.",
        size_sensitive=True,
        lock=ACCESS_EXCLUSIVE, work="scan",
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
    ),
    Rule(
        "alter-column-type", "Column type change", "medium",
        "ALTER COLUMN ... TYPE rewrites the table and its indexes under an ACCESS EXCLUSIVE lock (reads "
        "and writes wait), and the old code may not handle the new type.",
        "Add a new column of the new type, backfill in batches, switch the code, drop the old column later.",
        level="postgresql", size_sensitive=True,
        lock=ACCESS_EXCLUSIVE, work="rewrite",
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
        "Add the constraint NOT VALID, then VALIDATE CONSTRAINT in a separate step (only a SHARE UPDATE "
        "EXCLUSIVE lock).",
        level="postgresql", size_sensitive=True,
        lock="SHARE ROW EXCLUSIVE", work="scan",
    ),
    Rule(
        "add-primary-key", "PRIMARY KEY added to an existing table", "medium",
        "ADD PRIMARY KEY builds a unique index and checks NOT NULL on its columns under an ACCESS EXCLUSIVE "
        "lock: reads and writes wait for a full scan and sort.",
        "CREATE UNIQUE INDEX CONCURRENTLY, make the columns NOT NULL via a validated CHECK, then ADD "
        "CONSTRAINT ... PRIMARY KEY USING INDEX.",
        level="postgresql", size_sensitive=True,
        lock=ACCESS_EXCLUSIVE, work="index build",
    ),
    Rule(
        "drop-index-blocking", "DROP INDEX without CONCURRENTLY", "medium",
        "DROP INDEX takes an ACCESS EXCLUSIVE lock on the table: it waits behind every running query and "
        "every query queues behind it; queries of the old code that used the index get slower.",
        "Use RemoveIndexConcurrently (DROP INDEX CONCURRENTLY) in a migration with atomic = False.",
        level="postgresql",
        lock=ACCESS_EXCLUSIVE, work="none",
    ),
    Rule(
        "add-unique-constraint", "UNIQUE constraint built under lock", "medium",
        "ADD CONSTRAINT ... UNIQUE builds a unique index while blocking writes; duplicates make it fail.",
        "CREATE UNIQUE INDEX CONCURRENTLY first, then ADD CONSTRAINT ... UNIQUE USING INDEX.",
        level="postgresql", size_sensitive=True,
        lock=ACCESS_EXCLUSIVE, work="index build",
    ),
    Rule(
        "raw-sql-destructive", "Raw SQL drops, truncates or renames", "high",
        "DROP / TRUNCATE / RENAME in RunSQL breaks the running code or loses data.",
        "Move destructive SQL to a post-deploy phase after a verified snapshot.",
        level="postgresql",
        lock=ACCESS_EXCLUSIVE, work="none", breaks_old_code=True,
    ),
    Rule(
        "raw-sql-data-change", "Raw SQL changes rows of an existing table", "medium",
        "UPDATE / DELETE in the migration locks every row it touches for the whole transaction; on a big "
        "table that blocks the application's writes for long.",
        "Backfill in small batches after the deploy (django_backfill), outside the migration transaction.",
        level="postgresql", size_sensitive=True,
        lock="ROW EXCLUSIVE", work="data change",
    ),
    # -- data pre-checks (opt-in: prechecks=true) --------------------------------------
    Rule(
        "will-fail-nulls", "NULLs where the migration requires NOT NULL", "medium",
        "The column already holds NULL values: SET NOT NULL fails at deploy and the migration is rolled "
        "back (or, non-atomic, left half-applied) while the new code waits for it.",
        "Backfill the NULLs (in batches, before the release), or keep the column nullable.",
        level="data",
    ),
    Rule(
        "will-fail-duplicates", "Duplicates where the migration adds uniqueness", "medium",
        "Rows already share the values the new unique constraint forbids: building it fails at deploy.",
        "Deduplicate the rows first (a data migration or a backfill before the release), then add the "
        "constraint.",
        level="data",
    ),
    Rule(
        "will-fail-orphans", "Orphan rows where the migration adds a foreign key", "medium",
        "Rows reference keys that do not exist in the referenced table: validating the foreign key fails at "
        "deploy.",
        "Delete or fix the orphan rows first, or add the constraint NOT VALID and validate it after cleaning.",
        level="data",
    ),
    # -- backwards plans (target_migration below the applied state) -----------------------
    Rule(
        "unapply-irreversible", "Migration cannot be unapplied", "high",
        "An operation has no reverse (RunPython without reverse_code, RunSQL without reverse_sql, or an "
        "irreversible operation): migrating backwards stops with IrreversibleError.",
        "Roll back the application only (keep the schema), or restore the snapshot taken before the deploy.",
        level="rollback",
    ),
    Rule(
        "unapply-drops-data", "Unapplying drops a column or table with its data", "high",
        "The reverse of a migration that added a column or table drops it; whatever was written there since "
        "the deploy is lost, and code still using it breaks.",
        "Prefer rolling back the application only: the newer column/table is invisible to the old code.",
        level="rollback", lock=ACCESS_EXCLUSIVE, breaks_old_code=True,
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
) -> list[dict]:
    """PostgreSQL-level verdicts for SQL statements; ``raw`` is True for RunSQL text."""
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
        if _RE_SET_NOT_NULL.search(statement) and existing:
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
            if kind.startswith("UNIQUE") or kind.startswith("EXCLUDE"):
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
    return verdicts


def _short(statement: str, limit: int = 160) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def judge_operation(op: dict, tables: dict | None = None, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[dict]:
    """All verdicts for one operation's facts (as reported by the helper)."""
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
    verdicts.extend(judge_sql(statements, new_tables, tables, raw=raw, op=op, thresholds=thresholds))

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


def judge_migration(migration: dict, tables: dict | None = None, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict:
    """Judge every operation; returns the migration with risk, verdicts, sql and reversibility filled in."""
    tables = tables or {}
    if migration.get("direction") == "backwards":
        return _judge_backwards(migration, tables, thresholds)
    all_verdicts = []
    sql = []
    errors = []
    operations = []
    for op in migration.get("operations", []):
        op_verdicts = judge_operation(op, tables, thresholds)
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
    plan = [judge_migration(m, tables, thresholds) for m in reply.get("plan") or []]
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
    findings = [
        _verdict_line(migration, item)
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
        ("Findings (medium and high)", findings),
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
            lines.extend(f"- {_cell(item)}" for item in items)
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
        if rule.id in examples:
            lines += ["*Example:*", "", "```python", examples[rule.id].rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"
