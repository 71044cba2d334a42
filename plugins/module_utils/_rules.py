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

import datetime
import re
from dataclasses import dataclass

RISK_LEVELS = ("none", "low", "medium", "high")
RISK_RANK = {name: rank for rank, name in enumerate(RISK_LEVELS)}

# A table at least this big turns a "medium" lock/scan/rewrite into "high".
LARGE_TABLE_ROWS = 1_000_000
LARGE_TABLE_BYTES = 1024**3


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    risk: str
    why: str
    alternative: str
    level: str = "django"  # "django" (operation facts) or "postgresql" (SQL text)
    size_sensitive: bool = False  # graded by the size of the touched table


_RULE_LIST = [
    # -- Django level ----------------------------------------------------------
    Rule(
        "create-table", "New table", "low",
        "A new table is invisible to the running code; CREATE TABLE takes no lock on existing tables.",
        "Nothing to do.",
    ),
    Rule(
        "add-nullable-column", "New nullable column", "low",
        "ADD COLUMN ... NULL only changes the catalog (no rewrite), and old code that does not know the "
        "column keeps working: its INSERTs leave it NULL.",
        "Nothing to do.",
    ),
    Rule(
        "add-column-db-default", "New NOT NULL column with a database default", "low",
        "With a constant (or now()) db_default PostgreSQL 11+ stores the default in the catalog without "
        "rewriting the table, and old code's INSERTs get the default from the database.",
        "Nothing to do.",
    ),
    Rule(
        "add-column-volatile-db-default", "New column with an expression as database default", "medium",
        "A volatile default expression makes PostgreSQL rewrite the whole table under an ACCESS EXCLUSIVE lock.",
        "Add the column nullable, backfill in batches after the deploy, then add the default / NOT NULL.",
        size_sensitive=True,
    ),
    Rule(
        "add-column-new-table", "New column on a table created by this plan", "low",
        "The table does not exist yet for the running code.",
        "Nothing to do.",
    ),
    Rule(
        "not-null-django-default", "NOT NULL column with only a Django default", "high",
        "Django adds the column with a DEFAULT and drops the DEFAULT again in the same migration. "
        "The old code, still running during the rollout, does not send the column: its INSERTs fail "
        "with a NOT NULL violation (backward-incompatible).",
        "Use db_default=... (Django 5+) so the database fills the column, or add it null=True first and "
        "make it NOT NULL in a later release.",
    ),
    Rule(
        "not-null-no-default", "NOT NULL column without any default on an existing table", "high",
        "Existing rows have no value for it and the old code's INSERTs do not send it: the migration or "
        "the old code's writes fail.",
        "Add the column null=True (or with db_default), backfill, then add NOT NULL in a later release.",
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
    ),
    Rule(
        "remove-field", "Column removed", "high",
        "The running (old) code still selects and writes this column: every query on the model fails "
        "from the moment the migration commits until the new code runs everywhere.",
        "Expand/contract: release code that no longer uses the field first (or mark it with "
        "SeparateDatabaseAndState), drop the column in a later release's post-deploy phase.",
    ),
    Rule(
        "delete-model", "Table dropped", "high",
        "The running code still uses the model; the data is gone unless restored from a snapshot.",
        "Stop using the model in one release, drop the table in a later one, after a snapshot.",
    ),
    Rule(
        "rename-field", "Column renamed", "high",
        "The running code uses the old column name: its queries fail until every host runs the new code.",
        "Add the new column, write both, backfill, switch reads, drop the old one in a later release "
        "(or keep the column name with db_column=...).",
    ),
    Rule(
        "rename-model", "Table renamed", "high",
        "The running code uses the old table name: its queries fail until every host runs the new code.",
        "Keep the table name with Meta.db_table, or create a view with the old name during the rollout.",
    ),
    Rule(
        "alter-model-table", "Table renamed (db_table changed)", "high",
        "The running code uses the old table name.",
        "Keep db_table, or add a compatibility view during the rollout.",
    ),
    Rule(
        "drop-on-new-table", "Destructive change on a table created by this plan", "low",
        "The table did not exist before this plan, so no running code uses it.",
        "Nothing to do; consider squashing the migrations.",
    ),
    Rule(
        "run-python", "Data migration (RunPython)", "medium",
        "Python code runs inside the deploy; its duration and locks grow with the data, and it cannot be "
        "graded from SQL.",
        "Keep data migrations small, or run big backfills after the deploy in batches (django_backfill).",
    ),
    Rule(
        "run-python-irreversible", "RunPython without reverse_code", "medium",
        "The migration cannot be unapplied: rolling back the schema needs a snapshot restore.",
        "Give reverse_code (migrations.RunPython.noop when undoing needs no work).",
    ),
    Rule(
        "run-sql-irreversible", "RunSQL without reverse_sql", "medium",
        "The migration cannot be unapplied: rolling back the schema needs a snapshot restore.",
        "Give reverse_sql (migrations.RunSQL.noop when undoing needs no work).",
    ),
    Rule(
        "sql-depends-on-live-schema", "SQL cannot be rendered without the live schema", "medium",
        "Django introspects existing constraints or indexes to write this operation's SQL (e.g. "
        "unique_together / index changes, RenameIndex with old_fields), so its SQL could not be shown "
        "for this database state; it is graded from the operation only.",
        "Review the operation by hand, or plan against a copy of production with the earlier migrations applied.",
    ),
    Rule(
        "state-only", "No SQL (state-only change)", "none",
        "help_text, choices, verbose_name, ordering ... change Django's model state only; nothing runs in "
        "the database.",
        "Nothing to do.",
    ),
    Rule(
        "non-atomic-migration", "Migration is not atomic (single step)", "low",
        "atomic = False is what CONCURRENTLY needs; with a single step there is nothing to half-apply.",
        "Nothing to do; keep such migrations to that single operation.",
    ),
    Rule(
        "non-atomic-partial-apply", "Non-atomic migration with several steps", "medium",
        "A failure in the middle leaves the steps before it applied and the migration unrecorded: the "
        "next migrate fails on them (e.g. 'column already exists') and the deploy is stuck half-migrated.",
        "Move the step that needs atomic = False (CONCURRENTLY) into a migration of its own; keep the "
        "other steps atomic.",
    ),
    Rule(
        "concurrently-in-atomic", "CONCURRENTLY inside an atomic migration", "medium",
        "CREATE/DROP INDEX CONCURRENTLY cannot run inside a transaction block: the migration fails at "
        "deploy (Django refuses AddIndexConcurrently when atomic, PostgreSQL refuses the raw SQL).",
        "Set atomic = False on the migration and keep the concurrent operation alone in it.",
    ),
    Rule(
        "dml-with-ddl", "Data change in the same transaction as DDL on an existing table", "medium",
        "In an atomic migration the strong lock the DDL takes (ACCESS EXCLUSIVE for ALTER TABLE) is held "
        "until COMMIT, i.e. for the whole duration of the RunPython / UPDATE that follows or precedes it.",
        "Put schema changes and data changes in separate migrations (or run the backfill after the deploy).",
        size_sensitive=True,
    ),
    Rule(
        "several-strong-locks", "Several strong-lock statements in one transaction", "medium",
        "Each lock is held until the migration commits: writes wait for the sum of all the steps, and "
        "locks taken on several tables in an order the application does not use can deadlock.",
        "Split the migration so that each lock-taking step commits on its own.",
        size_sensitive=True,
    ),
    Rule(
        "catalog-change", "SQL without a lock or size hazard", "low",
        "The SQL only changes the catalog, creates new objects or works CONCURRENTLY (DROP NOT NULL, SET "
        "DEFAULT, RENAME INDEX, a NOT VALID constraint, a new table, CREATE INDEX CONCURRENTLY ...): at "
        "most a momentary lock, no scan or rewrite under a blocking lock, compatible with the old code.",
        "Nothing to do.",
    ),
    # -- PostgreSQL level (SQL text) -------------------------------------------
    Rule(
        "create-index-blocking", "CREATE INDEX without CONCURRENTLY on an existing table", "medium",
        "CREATE INDEX takes a SHARE lock: every INSERT, UPDATE and DELETE on the table waits until the "
        "index is built, which takes as long as a full table scan and sort.",
        "Use django.contrib.postgres.operations.AddIndexConcurrently in a migration with atomic = False.",
        level="postgresql", size_sensitive=True,
    ),
    Rule(
        "alter-column-type", "Column type change", "medium",
        "ALTER COLUMN ... TYPE rewrites the table and its indexes under an ACCESS EXCLUSIVE lock (reads "
        "and writes wait), and the old code may not handle the new type.",
        "Add a new column of the new type, backfill in batches, switch the code, drop the old column later.",
        level="postgresql", size_sensitive=True,
    ),
    Rule(
        "alter-column-type-no-rewrite", "Column type change without a rewrite", "low",
        "Widening a varchar or turning it into text only changes the catalog.",
        "Nothing to do.",
        level="postgresql",
    ),
    Rule(
        "add-constraint-validating", "Foreign key or CHECK constraint validated under lock", "medium",
        "ADD CONSTRAINT without NOT VALID scans the whole table while holding a lock that blocks writes "
        "(and for a foreign key, the referenced table too).",
        "Add the constraint NOT VALID, then VALIDATE CONSTRAINT in a separate step (only a SHARE UPDATE "
        "EXCLUSIVE lock).",
        level="postgresql", size_sensitive=True,
    ),
    Rule(
        "add-primary-key", "PRIMARY KEY added to an existing table", "medium",
        "ADD PRIMARY KEY builds a unique index and checks NOT NULL on its columns under an ACCESS EXCLUSIVE "
        "lock: reads and writes wait for a full scan and sort.",
        "CREATE UNIQUE INDEX CONCURRENTLY, make the columns NOT NULL via a validated CHECK, then ADD "
        "CONSTRAINT ... PRIMARY KEY USING INDEX.",
        level="postgresql", size_sensitive=True,
    ),
    Rule(
        "drop-index-blocking", "DROP INDEX without CONCURRENTLY", "medium",
        "DROP INDEX takes an ACCESS EXCLUSIVE lock on the table: it waits behind every running query and "
        "every query queues behind it; queries of the old code that used the index get slower.",
        "Use RemoveIndexConcurrently (DROP INDEX CONCURRENTLY) in a migration with atomic = False.",
        level="postgresql",
    ),
    Rule(
        "add-unique-constraint", "UNIQUE constraint built under lock", "medium",
        "ADD CONSTRAINT ... UNIQUE builds a unique index while blocking writes; duplicates make it fail.",
        "CREATE UNIQUE INDEX CONCURRENTLY first, then ADD CONSTRAINT ... UNIQUE USING INDEX.",
        level="postgresql", size_sensitive=True,
    ),
    Rule(
        "raw-sql-destructive", "Raw SQL drops, truncates or renames", "high",
        "DROP / TRUNCATE / RENAME in RunSQL breaks the running code or loses data.",
        "Move destructive SQL to a post-deploy phase after a verified snapshot.",
        level="postgresql",
    ),
    Rule(
        "raw-sql-data-change", "Raw SQL changes rows of an existing table", "medium",
        "UPDATE / DELETE in the migration locks every row it touches for the whole transaction; on a big "
        "table that blocks the application's writes for long.",
        "Backfill in small batches after the deploy (django_backfill), outside the migration transaction.",
        level="postgresql", size_sensitive=True,
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


def _size_note(table: str, tables: dict) -> str | None:
    stats = tables.get(table)
    if not stats:
        return None
    rows = stats.get("rows", -1)
    size = stats.get("bytes", 0)
    rows_text = "never analyzed" if rows is None or rows < 0 else f"~{rows:,} rows"
    return f"table {table}: {rows_text}, {size / 1024**2:.1f} MiB"


def grade(rule: Rule, table: str | None, tables: dict) -> str:
    """Risk of ``rule`` on ``table``: size-sensitive rules follow the real table size."""
    if not rule.size_sensitive or not table:
        return rule.risk
    stats = tables.get(table)
    if not stats:
        return rule.risk
    rows = stats.get("rows", -1)
    size = stats.get("bytes", 0)
    if (rows is not None and rows >= LARGE_TABLE_ROWS) or size >= LARGE_TABLE_BYTES:
        return "high"
    if rows == 0:  # analyzed and empty: nothing to scan or rewrite
        return "low"
    return rule.risk


def verdict(rule_id: str, *, table: str | None = None, tables: dict | None = None, detail: str | None = None) -> dict:
    rule = RULES[rule_id]
    tables = tables or {}
    result = {
        "rule": rule.id,
        "risk": grade(rule, table, tables),
        "title": rule.title,
        "why": rule.why,
        "alternative": rule.alternative,
    }
    notes = [n for n in (detail, _size_note(table, tables) if table else None) if n]
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
    statements: list[str], new_tables: set[str], tables: dict, *, raw: bool, op: dict | None = None
) -> list[dict]:
    """PostgreSQL-level verdicts for SQL statements; ``raw`` is True for RunSQL text."""
    verdicts = []
    for statement in statements:
        table = _statement_table(statement)
        existing = table is not None and table not in new_tables
        index = _RE_CREATE_INDEX.search(statement)
        if index and not index.group(2) and existing:
            verdicts.append(verdict("create-index-blocking", table=table, tables=tables, detail=_short(statement)))
        if _RE_ALTER_TYPE.search(statement) and existing:
            if op and _no_rewrite_type_change(op.get("field_before"), op.get("field")):
                verdicts.append(verdict("alter-column-type-no-rewrite", table=table, tables=tables))
            else:
                verdicts.append(verdict("alter-column-type", table=table, tables=tables, detail=_short(statement)))
        if _RE_SET_NOT_NULL.search(statement) and existing:
            verdicts.append(verdict("alter-field-set-not-null", table=table, tables=tables, detail=_short(statement)))
        drop_index = _RE_DROP_INDEX.search(statement)
        if drop_index and not drop_index.group(1):
            verdicts.append(verdict("drop-index-blocking", detail=_short(statement)))
        constraint = _RE_ADD_CONSTRAINT.search(statement)
        if existing and _RE_ADD_PRIMARY_KEY.search(statement):
            verdicts.append(verdict("add-primary-key", table=table, tables=tables, detail=_short(statement)))
        elif existing and (_RE_INLINE_FK.search(statement) or _RE_INLINE_UNIQUE.search(statement)):
            rule_id = "add-constraint-validating" if _RE_INLINE_FK.search(statement) else "add-unique-constraint"
            verdicts.append(verdict(rule_id, table=table, tables=tables, detail=_short(statement)))
        elif constraint and existing:
            kind = constraint.group(1).upper()
            if kind.startswith("UNIQUE") or kind.startswith("EXCLUDE"):
                verdicts.append(verdict("add-unique-constraint", table=table, tables=tables, detail=_short(statement)))
            elif not _RE_NOT_VALID.search(statement):
                verdicts.append(
                    verdict("add-constraint-validating", table=table, tables=tables, detail=_short(statement))
                )
        if raw and existing and _RE_VOLATILE_DEFAULT.search(statement):
            verdicts.append(
                verdict("add-column-volatile-db-default", table=table, tables=tables, detail=_short(statement))
            )
        if not raw and existing and op and op.get("type") == "AlterField" and _RE_RENAME_COLUMN.search(statement):
            verdicts.append(verdict("rename-field", table=table, tables=tables, detail=_short(statement)))
        if raw:
            if _RE_DESTRUCTIVE.search(statement):
                verdicts.append(verdict("raw-sql-destructive", detail=_short(statement)))
            data = _RE_DATA_CHANGE.search(statement)
            if data:
                data_table = _plain(data.group(2) or data.group(3))
                if data_table not in new_tables:
                    verdicts.append(
                        verdict("raw-sql-data-change", table=data_table, tables=tables, detail=_short(statement))
                    )
    return verdicts


def _short(statement: str, limit: int = 160) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def judge_operation(op: dict, tables: dict | None = None) -> list[dict]:
    """All verdicts for one operation's facts (as reported by the helper)."""
    tables = tables or {}
    kind = op.get("type")
    table = op.get("table")
    new_tables = set(op.get("new_tables") or [])
    is_new = bool(op.get("created_in_plan"))
    field = op.get("field") or {}
    verdicts: list[dict] = []

    if kind == "CreateModel":
        verdicts.append(verdict("create-table"))
    elif kind == "AddField":
        if is_new:
            verdicts.append(verdict("add-column-new-table"))
        elif field.get("null"):
            verdicts.append(verdict("add-nullable-column"))
        elif field.get("db_default"):
            if field.get("db_default_kind") == "expression":
                verdicts.append(verdict("add-column-volatile-db-default", table=table, tables=tables))
            else:
                verdicts.append(verdict("add-column-db-default"))
        elif field.get("has_default") or op.get("preserve_default") is False:
            verdicts.append(verdict("not-null-django-default", table=table, tables=tables))
        elif not field.get("primary_key"):
            verdicts.append(verdict("not-null-no-default", table=table, tables=tables))
    elif kind == "RenameModel" and op.get("new_table") and op.get("new_table") == table:
        pass  # Meta.db_table is kept: the table is not renamed (judged from its SQL, if any)
    elif kind in ("RemoveField", "DeleteModel", "RenameField", "RenameModel", "AlterModelTable"):
        if is_new:
            verdicts.append(verdict("drop-on-new-table", detail=f"{kind} on {table}"))
        else:
            rule_id = {
                "RemoveField": "remove-field",
                "DeleteModel": "delete-model",
                "RenameField": "rename-field",
                "RenameModel": "rename-model",
                "AlterModelTable": "alter-model-table",
            }[kind]
            verdicts.append(verdict(rule_id, table=table, tables=tables))
    elif kind == "RunPython":
        verdicts.append(verdict("run-python"))
        if not (op.get("run_python") or {}).get("reverse_code_given"):
            verdicts.append(verdict("run-python-irreversible"))
    elif kind == "RunSQL" and not (op.get("run_sql") or {}).get("reverse_sql_given"):
        verdicts.append(verdict("run-sql-irreversible"))

    if op.get("sql_error"):
        verdicts.append(verdict("sql-depends-on-live-schema", detail=op["sql_error"]))

    # SeparateDatabaseAndState's database operations are hand-picked: judge their SQL like raw SQL.
    raw = kind in ("RunSQL", "SeparateDatabaseAndState")
    statements = (op.get("run_sql") or {}).get("sql", []) if kind == "RunSQL" else op.get("sql") or []
    verdicts.extend(judge_sql(statements, new_tables, tables, raw=raw, op=op))

    if not verdicts and kind != "RunPython" and any(s.strip() for s in statements):
        verdicts.append(verdict("catalog-change"))

    if (
        not verdicts
        and op.get("reduces_to_sql", True)
        and not op.get("sql")
        and not op.get("sql_error")
        and kind not in ("RunSQL", "RunPython")
    ):
        verdicts.append(verdict("state-only"))
    return verdicts


def _op_statements(op: dict) -> list[str]:
    return list(op.get("sql") or []) + list((op.get("run_sql") or {}).get("sql") or [])


def _biggest(names, tables: dict) -> str | None:
    known = [n for n in names if n in tables]
    if not known:
        return next(iter(sorted(names)), None)
    return max(known, key=lambda n: (tables[n].get("rows") or 0, tables[n].get("bytes") or 0))


def _migration_verdicts(migration: dict, operations: list[dict], tables: dict) -> list[dict]:
    """Rules about the migration as a whole (its transaction), from its judged operations."""
    out = []
    atomic = migration.get("atomic", True)
    working = [op for op in operations if op.get("type") == "RunPython" or any(s.strip() for s in _op_statements(op))]
    if not atomic:
        rule_id = "non-atomic-partial-apply" if len(working) > 1 else "non-atomic-migration"
        out.append(verdict(rule_id))
        return out
    if any(_RE_CONCURRENTLY.search(s) for op in operations for s in _op_statements(op)):
        out.append(verdict("concurrently-in-atomic"))
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
        out.append(verdict("dml-with-ddl", table=table, tables=tables))
    # Several lock-taking statements that do real work, held together until COMMIT.
    lockers = [
        op for op in operations
        if any(v["rule"] in _LOCK_RULES and RISK_RANK[v["risk"]] >= RISK_RANK["medium"] for v in op["verdicts"])
    ]
    if len(lockers) > 1:
        locked = set()
        for op in lockers:
            locked |= set(op.get("tables") or []) - set(op.get("new_tables") or [])
        out.append(verdict("several-strong-locks", table=_biggest(locked, tables), tables=tables))
    return out


def judge_migration(migration: dict, tables: dict | None = None) -> dict:
    """Judge every operation; returns the migration with risk, verdicts, sql and reversibility filled in."""
    tables = tables or {}
    all_verdicts = []
    sql = []
    errors = []
    operations = []
    for op in migration.get("operations", []):
        op_verdicts = judge_operation(op, tables)
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
    all_verdicts.extend(dict(v, operation=None) for v in _migration_verdicts(migration, operations, tables))
    result = dict(migration)
    result["operations"] = operations
    result["verdicts"] = all_verdicts
    result["risk"] = max_risk(v["risk"] for v in all_verdicts)
    result["reversible"] = all(op.get("reversible", True) for op in operations)
    result["sql"] = sql
    result["sql_error"] = "; ".join(errors) or None
    return result


# -- gate ------------------------------------------------------------------------


def parse_waivers(waivers: list[dict] | None) -> tuple[list[dict], list[str]]:
    """Validate waivers; returns (waivers with a parsed ``expires_date``, errors)."""
    parsed, errors = [], []
    for position, waiver in enumerate(waivers or [], start=1):
        label = f"waiver {position}"
        if not isinstance(waiver, dict):
            errors.append(f"{label} is not a dict")
            continue
        migration = str(waiver.get("migration") or "").strip()
        rule = waiver.get("rule")
        reason = str(waiver.get("reason") or "").strip()
        expires = waiver.get("expires")
        if not re.fullmatch(r"[\w]+\.[\w]+", migration):
            errors.append(f"{label}: migration must be 'app_label.migration_name', got {migration!r}")
        if rule is not None and rule not in RULES:
            errors.append(f"{label}: unknown rule {rule!r} (known: {', '.join(sorted(RULES))})")
        if not reason:
            errors.append(f"{label} ({migration}): a non-empty reason is required")
        expires_date = None
        if isinstance(expires, datetime.date):
            expires_date = expires
        else:
            try:
                expires_date = datetime.date.fromisoformat(str(expires or ""))
            except ValueError:
                errors.append(f"{label} ({migration}): expires must be a date YYYY-MM-DD, got {expires!r}")
        parsed.append(
            {
                "migration": migration,
                "rule": rule,
                "reason": reason,
                "expires": expires_date.isoformat() if expires_date else str(expires),
                "expires_date": expires_date,
            }
        )
    return parsed, errors


def gate(plan: list[dict], threshold: str, waivers: list[dict], today: datetime.date) -> dict:
    """Block when a verdict is riskier than ``threshold`` and no valid waiver covers it.

    A waiver is valid through its ``expires`` day; an expired one is reported and ignored.
    """
    if threshold not in RISK_RANK:
        raise ValueError(f"unknown risk level {threshold!r}")
    valid = [w for w in waivers if w["expires_date"] and w["expires_date"] >= today]
    expired = [w for w in waivers if w["expires_date"] and w["expires_date"] < today]
    reasons, waived = [], []
    for migration in plan:
        for item in migration.get("verdicts", []):
            if RISK_RANK[item["risk"]] <= RISK_RANK[threshold]:
                continue
            where = migration["id"]
            if item.get("operation") is not None:
                where += f" operation {item['operation']}"
            waiver = next(
                (
                    w for w in valid
                    if w["migration"] == migration["id"] and (w["rule"] is None or w["rule"] == item["rule"])
                ),
                None,
            )
            if waiver:
                waived.append(
                    {
                        "migration": migration["id"],
                        "operation": item.get("operation"),
                        "rule": item["rule"],
                        "risk": item["risk"],
                        "reason": waiver["reason"],
                        "expires": waiver["expires"],
                    }
                )
                continue
            text = f"{where}: {item['rule']} is {item['risk']} (above {threshold}): {item['title']}"
            for w in expired:
                if w["migration"] == migration["id"] and (w["rule"] is None or w["rule"] == item["rule"]):
                    text += f" (waiver expired on {w['expires']})"
            reasons.append(text)
    return {
        "max_risk": threshold,
        "blocked": bool(reasons),
        "reasons": reasons,
        "waived": waived,
        "expired_waivers": [
            {"migration": w["migration"], "rule": w["rule"], "reason": w["reason"], "expires": w["expires"]}
            for w in expired
        ],
    }


def assess_plan(reply: dict, threshold: str, waivers: list[dict], today: datetime.date) -> dict:
    """Turn the helper's plan reply into the module's result (without ``changed``)."""
    tables = reply.get("tables") or {}
    plan = [judge_migration(m, tables) for m in reply.get("plan") or []]
    result = {
        "plan": plan,
        "pending": [m["id"] for m in plan],
        "highest_risk": max_risk(m["risk"] for m in plan),
        "missing_migrations": {
            app: [m["name"] if isinstance(m, dict) else m for m in items]
            for app, items in (reply.get("missing_migrations") or {}).items()
        },
        "target": reply.get("target") or {},
        "tables": tables,
        "gate": gate(plan, threshold, waivers, today),
    }
    result["report_markdown"] = render_markdown(result)
    return result


# -- reports -----------------------------------------------------------------------


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(result: dict) -> str:
    target = result.get("target") or {}
    gate_info = result.get("gate") or {}
    plan = result.get("plan") or []
    lines = [
        f"## Migration plan for {target.get('database', '?')} on {target.get('host', '?')}:{target.get('port', '?')}",
        "",
        f"{len(plan)} pending migration(s); highest risk: **{result.get('highest_risk', 'none')}**; "
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
    for title, items in (
        ("Blocking", gate_info.get("reasons")),
        ("Waived", [f"{w['migration']}: {w['rule']} ({w['risk']}) - {w['reason']} (until {w['expires']})"
                    for w in gate_info.get("waived") or []]),
        ("Expired waivers (not applied)", [f"{w['migration']}: {w['rule'] or 'any rule'} - expired {w['expires']}"
                                           for w in gate_info.get("expired_waivers") or []]),
        ("SQL that depends on the live schema", [f"{m['id']}: {m['sql_error']}" for m in plan if m.get("sql_error")]),
        ("Missing migrations", [f"{app}: {', '.join(names)}"
                                for app, names in (result.get("missing_migrations") or {}).items()]),
    ):
        if items:
            lines.append(f"**{title}:**")
            lines.extend(f"- {_cell(item)}" for item in items)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def rules_markdown() -> str:
    """docs/rules.md, generated from the registry (devtools/gen_rules_doc.py)."""
    lines = [
        "# Migration risk rules",
        "",
        "Generated from `plugins/module_utils/_rules.py` by `devtools/gen_rules_doc.py`; do not edit by hand.",
        "",
        "`django_migration_plan` judges every pending operation with these rules. Rule ids are what",
        "waivers name (`waivers: [{migration: app.0007_x, rule: <id>, reason: ..., expires: YYYY-MM-DD}]`).",
        f"Size-sensitive rules become **high** on a table with at least {LARGE_TABLE_ROWS:,} rows or "
        f"{LARGE_TABLE_BYTES // 1024**3} GiB, and **low** on a table known to be empty (analyzed, 0 rows).",
        "",
        "| Rule | Level | Risk | Size-sensitive | Title |",
        "| --- | --- | --- | --- | --- |",
    ]
    for rule in _RULE_LIST:
        lines.append(
            f"| [`{rule.id}`](#{rule.id}) | {rule.level} | {rule.risk} | {'yes' if rule.size_sensitive else 'no'} "
            f"| {_cell(rule.title)} |"
        )
    lines.append("")
    for rule in _RULE_LIST:
        lines += [
            f"## {rule.id}",
            "",
            f"**{rule.title}** — risk **{rule.risk}**, {rule.level} level"
            + (", graded by table size." if rule.size_sensitive else "."),
            "",
            f"*Why:* {rule.why}",
            "",
            f"*Safer:* {rule.alternative}",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"
