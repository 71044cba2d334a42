# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helper that runs inside the *application's* interpreter, next to its Django.

The Ansible modules never import the application's Django. They ship the source
of this file to the target, run it with the app's Python (cwd = project
directory), send one JSON request on stdin and read one JSON reply on stdout.

Rules for this file:
- stdlib only at import time (Django is imported inside functions), so the
  Ansible side can import it too (for ``lock_key``) and AnsiballZ packs it;
- Django's own prints must not corrupt the reply: fd 1 is pointed at stderr
  while we work, the reply goes to a saved copy of the real stdout;
- never put a password in the reply: every message is scrubbed of the
  database passwords the helper knows about.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import sys
import time
import traceback

PROTOCOL = 1

# Statements whose target table we want to size (best effort, SQL is Django's).
_TABLE_PATTERNS = [
    re.compile(r'\bALTER\s+TABLE\s+(?:ONLY\s+)?(?:IF\s+EXISTS\s+)?"?([\w.]+)"?', re.I),
    re.compile(
        r'\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"?\w*"?\s+'
        r'ON\s+(?:ONLY\s+)?"?([\w.]+)"?',
        re.I,
    ),
    re.compile(r'\bUPDATE\s+(?:ONLY\s+)?"?([\w.]+)"?\s+SET\b', re.I),
    re.compile(r'\bDELETE\s+FROM\s+(?:ONLY\s+)?"?([\w.]+)"?', re.I),
    re.compile(r'\bINSERT\s+INTO\s+"?([\w.]+)"?', re.I),
    re.compile(r'\bDROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?"?([\w.]+)"?', re.I),
    re.compile(r'\bTRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?"?([\w.]+)"?', re.I),
]
_CREATE_TABLE = re.compile(r'\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"?([\w.]+)"?', re.I)


class HelperError(Exception):
    """An error with a kind the Ansible side maps to a message."""

    def __init__(self, kind: str, message: str, **details):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details


def lock_key(database: str, lock_name: str) -> int:
    """Advisory lock key: signed 64-bit int from sha256(database name + lock name)."""
    digest = hashlib.sha256((str(database) + str(lock_name)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# ---------------------------------------------------------------------------
# Django setup and connection


def _setup_django(request: dict):
    project = os.getcwd()
    if project not in sys.path:
        sys.path.insert(0, project)
    settings_module = request.get("settings")
    if settings_module:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    settings_module = os.environ.get("DJANGO_SETTINGS_MODULE")
    if not settings_module:
        raise HelperError("settings_missing", "no Django settings module given and DJANGO_SETTINGS_MODULE is not set")
    try:
        import django
    except ImportError as exc:
        raise HelperError(
            "django_missing",
            f"Django is not importable in {sys.executable}: {exc}",
            interpreter=sys.executable,
        ) from exc
    import importlib

    try:
        importlib.import_module(settings_module)
    except Exception as exc:  # noqa: BLE001 - anything the settings raise is the user's to fix
        raise HelperError(
            "settings_import",
            f"cannot import settings module '{settings_module}' from {project}: "
            f"{type(exc).__name__}: {exc}",
            settings=settings_module,
        ) from exc
    try:
        django.setup()
    except Exception as exc:  # noqa: BLE001
        raise HelperError(
            "django_setup",
            f"django.setup() failed with settings '{settings_module}': {type(exc).__name__}: {exc}",
            settings=settings_module,
        ) from exc
    return django


def _known_secrets() -> list[str]:
    secrets = []
    value = os.environ.get("PGPASSWORD")
    if value:
        secrets.append(value)
    try:
        from django.conf import settings

        for db in getattr(settings, "DATABASES", {}).values():
            password = db.get("PASSWORD")
            if password:
                secrets.append(str(password))
    except Exception:  # noqa: BLE001 - settings may not be configured yet
        pass
    return [s for s in secrets if len(s) >= 1]


def _connection_params(connection) -> dict:
    sd = connection.settings_dict
    opts = sd.get("OPTIONS") or {}
    return {
        "alias": connection.alias,
        "host": sd.get("HOST") or opts.get("host") or os.environ.get("PGHOST") or "(libpq default)",
        "port": str(sd.get("PORT") or opts.get("port") or os.environ.get("PGPORT") or "5432"),
        "database": sd.get("NAME") or os.environ.get("PGDATABASE") or "(libpq default)",
        "user": sd.get("USER") or opts.get("user") or os.environ.get("PGUSER") or "(libpq default)",
    }


def _classify_db_error(exc: Exception, connection) -> HelperError:
    text = str(exc).strip()
    params = _connection_params(connection)
    where = (
        f"PostgreSQL at {params['host']}:{params['port']} "
        f"(database '{params['database']}', user '{params['user']}')"
    )
    low = text.lower()
    if "password authentication failed" in low or "no password supplied" in low or "authentication failed" in low:
        return HelperError(
            "db_auth",
            f"{where} rejected the login: authentication failed for user '{params['user']}'. "
            "Check the password the app's settings use (e.g. PGPASSWORD in app_environment or the task environment).",
            connection=params,
        )
    if "does not exist" in low and "database" in low:
        return HelperError(
            "db_missing",
            f"{where}: the database '{params['database']}' does not exist. Create it or fix NAME / PGDATABASE.",
            connection=params,
        )
    if "permission denied" in low:
        return HelperError("db_permission", f"{where}: permission denied: {text}", connection=params)
    return HelperError(
        "db_unreachable",
        f"cannot reach {where} for Django database alias '{connection.alias}': {_first_line(text)}. "
        "Check that the server runs and that HOST/PORT in the settings (or PGHOST/PGPORT) are right.",
        connection=params,
    )


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return text


def _connect(alias: str):
    from django.db import DatabaseError, connections

    if alias not in connections.settings:
        raise HelperError(
            "database_alias",
            f"database alias '{alias}' is not in settings.DATABASES (known: {', '.join(sorted(connections.settings))})",
        )
    connection = connections[alias]
    if connection.vendor != "postgresql":
        raise HelperError(
            "not_postgresql",
            f"database alias '{alias}' uses the '{connection.vendor}' backend; safedeploy.django needs PostgreSQL",
        )
    try:
        connection.ensure_connection()
    except DatabaseError as exc:
        raise _classify_db_error(exc, connection) from exc
    return connection


def _fingerprint(connection) -> dict:
    info = connection.connection.info
    fp = {
        "alias": connection.alias,
        "host": info.host,
        "port": int(info.port) if info.port else None,
        "database": info.dbname,
        "user": info.user,
        "server_version": None,
        "system_identifier": None,
        "in_recovery": None,
    }
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version'), pg_is_in_recovery()")
        fp["server_version"], fp["in_recovery"] = cursor.fetchone()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT system_identifier::text FROM pg_control_system()")
            fp["system_identifier"] = cursor.fetchone()[0]
    except Exception as exc:  # noqa: BLE001 - not granted to every role
        fp["system_identifier_error"] = _first_line(str(exc))
    return fp


# ---------------------------------------------------------------------------
# Plan: one forward pass, SQL per operation


def _model_table(state, app_label: str, model_lower: str):
    try:
        return state.apps.get_model(app_label, model_lower)._meta.db_table
    except Exception:  # noqa: BLE001 - model absent from this state
        return None


def _get_field(state, app_label, model_lower, name):
    try:
        return state.apps.get_model(app_label, model_lower)._meta.get_field(name)
    except Exception:  # noqa: BLE001
        return None


def _field_facts(field, connection) -> dict | None:
    if field is None:
        return None
    from django.db.models import NOT_PROVIDED
    from django.db.models.expressions import Value

    facts = {
        "name": field.name,
        "column": getattr(field, "column", None),
        "null": bool(field.null),
        "has_default": bool(field.has_default()),
        "db_default": field.db_default is not NOT_PROVIDED,
        "db_default_kind": None,
        "db_index": bool(field.db_index),
        "unique": bool(field.unique),
        "primary_key": bool(field.primary_key),
        "is_relation": bool(field.is_relation),
        "internal_type": field.get_internal_type(),
        "db_type": None,
        "db_constraint": bool(getattr(field, "db_constraint", False)),
    }
    if facts["db_default"]:
        default = field.db_default
        if isinstance(default, Value) or not hasattr(default, "resolve_expression"):
            facts["db_default_kind"] = "constant"
        elif type(default).__name__ in ("Now", "CurrentTimestamp"):
            facts["db_default_kind"] = "now"
        else:
            facts["db_default_kind"] = "expression"
    with contextlib.suppress(Exception):
        facts["db_type"] = field.db_type(connection)
    return facts


def _sql_text(sql) -> list[str]:
    """RunSQL accepts a string, a list of strings or (sql, params) pairs."""
    if sql is None:
        return []
    if isinstance(sql, str):
        return [sql]
    out = []
    for item in sql:
        if isinstance(item, (list, tuple)):
            out.append(str(item[0]))
        else:
            out.append(str(item))
    return out


def _callable_name(code) -> str:
    """Dotted name of a RunPython function, as the plan reports it."""
    return f"{getattr(code, '__module__', '?')}.{getattr(code, '__qualname__', repr(code))}"


def _operation_facts(op, app_label, old_state, new_state, connection) -> dict:
    from django.db import migrations

    facts: dict = {
        "type": type(op).__name__,
        "description": op.describe(),
        "model": None,
        "table": None,
        "reversible": bool(op.reversible),
        "reduces_to_sql": bool(op.reduces_to_sql),
        "elidable": bool(getattr(op, "elidable", False)),
    }
    model_lower = getattr(op, "model_name_lower", None)
    if model_lower is None and isinstance(op, migrations.operations.models.ModelOperation):
        model_lower = op.name_lower
    if isinstance(op, migrations.RenameModel):
        model_lower = op.old_name_lower
        facts["old_name"], facts["new_name"] = op.old_name, op.new_name
        facts["new_table"] = _model_table(new_state, app_label, op.new_name_lower)
    if model_lower:
        facts["model"] = f"{app_label}.{model_lower}"
        facts["table"] = _model_table(old_state, app_label, model_lower) or _model_table(
            new_state, app_label, model_lower
        )
    if isinstance(op, (migrations.AddField, migrations.AlterField)):
        facts["field"] = _field_facts(_get_field(new_state, app_label, op.model_name_lower, op.name), connection)
    if isinstance(op, migrations.AlterField):
        facts["field_before"] = _field_facts(_get_field(old_state, app_label, op.model_name_lower, op.name), connection)
    if isinstance(op, migrations.AddField):
        facts["preserve_default"] = bool(op.preserve_default)
    if isinstance(op, migrations.RemoveField):
        facts["field_before"] = _field_facts(_get_field(old_state, app_label, op.model_name_lower, op.name), connection)
    if isinstance(op, migrations.RenameField):
        facts["old_name"], facts["new_name"] = op.old_name, op.new_name
    if isinstance(op, (migrations.AddIndex, migrations.RemoveIndex)) or type(op).__name__ in (
        "AddIndexConcurrently",
        "RemoveIndexConcurrently",
    ):
        index = getattr(op, "index", None)
        facts["index"] = {
            "name": getattr(index, "name", None) or getattr(op, "name", None),
            "fields": list(getattr(index, "fields", []) or []),
            "concurrently": "Concurrently" in type(op).__name__,
            "unique": False,
        }
    if isinstance(op, (migrations.AddConstraint, migrations.RemoveConstraint)):
        constraint = getattr(op, "constraint", None)
        facts["constraint"] = {
            "name": getattr(constraint, "name", None) or getattr(op, "name", None),
            "kind": type(constraint).__name__ if constraint is not None else None,
        }
    if isinstance(op, migrations.RunSQL):
        facts["run_sql"] = {
            "sql": _sql_text(op.sql),
            "reverse_sql_given": op.reverse_sql is not None,
        }
    if isinstance(op, migrations.RunPython):
        code = op.code
        facts["run_python"] = {"code": _callable_name(code), "reverse_code_given": op.reverse_code is not None}
    if isinstance(op, migrations.SeparateDatabaseAndState):
        facts["database_operations"] = [type(sub).__name__ for sub in op.database_operations]
        facts["state_operations"] = [type(sub).__name__ for sub in op.state_operations]
    if "atomic" in getattr(op, "__dict__", {}):
        facts["atomic"] = op.atomic
    specs = _precheck_specs(op, app_label, old_state, new_state, connection)
    if specs:
        facts["_precheck_specs"] = specs  # private: run by _prechecks, dropped before the reply
    return facts


def _tables_in_sql(statements: list[str]) -> set[str]:
    found = set()
    for statement in statements:
        for pattern in _TABLE_PATTERNS:
            for match in pattern.finditer(statement):
                found.add(match.group(1).split(".")[-1])
    return found


# Operations that change one model only in ways no other model's class can see
# (its own non-key fields, options, indexes, constraints): after them only that
# model is re-rendered. Django re-renders every related model too (for the User
# or wagtail's Page that is most of the project), which is most of a walk's time.
_MODEL_LOCAL_OPERATIONS = {
    "CreateModel", "AddField", "AlterField", "RemoveField", "AlterModelOptions", "AlterModelManagers",
    "AddIndex", "RemoveIndex", "RenameIndex", "AddConstraint", "RemoveConstraint", "AlterConstraint",
    "AlterUniqueTogether", "AlterIndexTogether", "AlterModelTableComment", "RenameField",
}


def _base_label(base):
    """'app_label.model_name' of a concrete model base (a model state's bases), else None."""
    if isinstance(base, str):
        return base.lower()
    meta = getattr(base, "_meta", None)
    if meta is None or meta.abstract:
        return None
    return f"{meta.app_label}.{meta.model_name}"


def _model_local_key(op, app_label, state):
    """The model an operation changes, when re-rendering that model alone keeps every class exact."""
    try:
        return _model_local_key_unchecked(op, app_label, state)
    except Exception:  # noqa: BLE001 - another Django version or a custom operation: Django's own way
        return None


def _model_local_key_unchecked(op, app_label, state):
    from django.db.migrations.utils import field_is_referenced  # Django >= 4.0

    if not hasattr(state, "_reload"):
        return None
    kind = type(op).__name__
    if kind not in _MODEL_LOCAL_OPERATIONS or type(op).__module__.split(".")[:3] != ["django", "db", "migrations"]:
        return None
    name = getattr(op, "model_name_lower", None) or getattr(op, "name_lower", None)
    if not name:
        return None
    key = (app_label, name)
    if kind == "CreateModel":
        bases = op.bases
    elif key in state.models:
        bases = state.models[key].bases
    else:
        return None
    if op.__dict__.get("options", {}).get("proxy") or any(_base_label(base) for base in bases):
        return None  # a proxy or a multi-table child: its class embeds its parent's
    label = f"{app_label}.{name}"
    for model_state in state.models.values():
        if any(_base_label(base) == label for base in model_state.bases):
            return None  # our children's classes embed ours
    if kind == "CreateModel":
        return key
    if kind in ("AddField", "AlterField", "RemoveField", "RenameField"):
        old_name = op.old_name if kind == "RenameField" else op.name
        old = state.models[key].fields.get(old_name)
        new = getattr(op, "field", None)
        for field in (old, new):
            if field is not None and (field.primary_key or (field.is_relation and field.many_to_many)):
                return None
        if old is not None and field_is_referenced(state, key, (old_name, old)):
            return None  # another model points at this field (to_field, from_fields)
        if kind == "AlterField" and old is not None and old.db_column != new.db_column:
            return None
    return key


def _state_forwards(op, app_label, state):
    """Apply ``op`` to the rendered ``state`` like Migration.apply does; return the state before it.

    A model-local operation re-renders its model only, and the returned state
    shares the model states it does not change (Django clones them all).
    """
    from django.db import migrations

    exact_type = type(op)  # not a subclass: it may change the state
    if (
        "apps" in state.__dict__
        and exact_type in (migrations.RunPython, migrations.RunSQL)
        and not getattr(op, "state_operations", None)
    ):
        old_state = _clone_state(state, None)  # their state_forwards changes nothing
        op.state_forwards(app_label, state)
        return old_state
    key = _model_local_key(op, app_label, state) if "apps" in state.__dict__ else None
    if key is None:
        old_state = state.clone()
        op.state_forwards(app_label, state)
        return old_state
    old_state = _clone_state(state, key)
    apps = state.__dict__.pop("apps")
    try:
        op.state_forwards(app_label, state)  # unrendered: only the model state of ``key`` changes
    finally:
        state.__dict__["apps"] = apps
    state._reload({key})
    return old_state


def _clone_state(state, key):
    """ProjectState.clone() that copies only the model state of ``key``, the one about to change."""
    from collections import defaultdict

    from django.db.migrations.state import AppConfigStub, ProjectState, StateApps

    model_states = dict(state.models)
    if key in model_states:
        model_states[key] = model_states[key].clone()
    clone = ProjectState(models=model_states, real_apps=state.real_apps)
    clone.is_delayed = state.is_delayed
    # StateApps.clone(), with dict copies where it deep-copies a mapping of classes (copied by reference).
    apps = state.apps
    new_apps = StateApps([], {})
    new_apps.all_models = defaultdict(dict, {label: dict(classes) for label, classes in apps.all_models.items()})
    for app_label in apps.app_configs:
        app_config = AppConfigStub(app_label)
        app_config.apps = new_apps
        app_config.import_models()
        new_apps.app_configs[app_label] = app_config
    new_apps.real_models = apps.real_models
    clone.apps = new_apps
    return clone


def _migration_item(migration, direction: str) -> dict:
    """What a plan item says of its migration, whichever way the plan goes."""
    return {
        "id": f"{migration.app_label}.{migration.name}",
        "app_label": migration.app_label,
        "name": migration.name,
        "atomic": bool(migration.atomic),
        "initial": bool(getattr(migration, "initial", False)),
        "replaces": [f"{a}.{n}" for a, n in (migration.replaces or [])],
        "direction": direction,
        "file": _migration_file(migration),
    }


def _close_editor(editor, operations: list[dict], deferred_owner: dict[int, int]) -> None:
    """Flush the deferred SQL (FKs, indexes of new tables) like a real migration, onto the operation
    that deferred it; an error there is recorded on the last operation, the walk goes on."""
    deferred = list(editor.deferred_sql)
    try:
        editor.__exit__(None, None, None)
    except Exception as exc:  # noqa: BLE001
        if operations:
            last = operations[-1]
            last["sql_error"] = last["sql_error"] or f"deferred SQL: {type(exc).__name__}: {_first_line(str(exc))}"
    for statement in deferred:
        owner = deferred_owner.get(id(statement))
        if owner is not None:
            operations[owner]["sql"].append(str(statement) + ("" if str(statement).rstrip().endswith(";") else ";"))


def _operation_statements(facts: dict) -> list[str]:
    return list(facts["sql"]) + list(facts.get("run_sql", {}).get("sql", []))


def _touched_tables(facts: dict) -> set[str]:
    tables = _tables_in_sql(_operation_statements(facts))
    if facts.get("table"):
        tables.add(facts["table"])
    return tables


def _walk_plan(executor, plan, connection, post_ids=()) -> list[dict]:
    """Collect facts and SQL for every operation of ``plan`` in one forward pass.

    Mirrors Migration.apply(collect_sql=True) one operation at a time so that an
    operation whose SQL cannot be rendered (it introspects the live schema) is
    recorded with ``sql_error`` instead of stopping the walk; state_forwards has
    already run for it, so the following operations see the right state.
    The ProjectState is carried forward; it is never rebuilt per migration, and
    after a model-local operation only that model is re-rendered (_state_forwards).
    """
    # What migrate itself starts from: unmigrated apps + applied migrations.
    state = executor._create_project_state(with_applied_migrations=True)
    created_tables: set[str] = set()
    result = []
    for migration, backwards in plan:
        if backwards:  # the full-forward plan never goes backwards; be explicit anyway
            raise HelperError("plan_backwards", f"plan unexpectedly unapplies {migration.app_label}.{migration.name}")
        app_label = migration.app_label
        operations = []
        # atomic=False: we only collect SQL, and a failed introspection query must
        # not poison a transaction shared by the following operations.
        editor = connection.schema_editor(collect_sql=True, atomic=False)
        editor.__enter__()
        deferred_owner: dict[int, int] = {}
        try:
            for index, op in enumerate(migration.operations):
                before = len(editor.collected_sql)
                deferred_before = {id(s) for s in editor.deferred_sql}
                old_state = _state_forwards(op, app_label, state)
                sql_error = None
                if op.reduces_to_sql:
                    try:
                        op.database_forwards(app_label, editor, old_state, state)
                    except Exception as exc:  # noqa: BLE001 - recorded, walk continues
                        sql_error = f"{type(exc).__name__}: {_first_line(str(exc))}"
                facts = _operation_facts(op, app_label, old_state, state, connection)
                facts["index"] = index
                facts["sql"] = list(editor.collected_sql[before:])
                facts["sql_error"] = sql_error
                for statement in editor.deferred_sql:
                    if id(statement) not in deferred_before:
                        deferred_owner[id(statement)] = index
                operations.append(facts)
        finally:
            _close_editor(editor, operations, deferred_owner)
        # Which tables each operation touches, and which of them this plan creates
        # (a table the running code has never seen cannot break it).
        for facts in operations:
            statements = _operation_statements(facts)
            tables = _touched_tables(facts)
            created_here = {m.group(1).split(".")[-1] for s in statements for m in _CREATE_TABLE.finditer(s)}
            if facts["type"] == "CreateModel" and facts.get("table"):
                created_here.add(facts["table"])
            tables |= created_here
            new_tables = (created_tables | created_here) & tables
            facts["tables"] = sorted(tables)
            facts["new_tables"] = sorted(new_tables)
            facts["created_in_plan"] = bool(facts.get("table")) and facts["table"] in new_tables
            created_tables |= created_here
            if facts["type"] == "RenameModel" and facts.get("new_table") and facts.get("table") in created_tables:
                created_tables.add(facts["new_table"])
        result.append(
            {
                **_migration_item(migration, "forwards"),
                "phase": _migration_phase(migration, post_ids),
                "operations": operations,
            }
        )
    return result


def _table_sizes(connection, tables: set[str]) -> dict:
    """Size and write activity of the live tables, from the catalog and the statistics system (one query).

    - ``rows``: pg_class.reltuples (the planner's estimate, refreshed by ANALYZE / VACUUM); when the
      table was never analyzed (reltuples = -1) but the statistics count live tuples, that count
      (``rows_source`` "live_tuples", so a never-analyzed table with 2M inserted rows still reads
      as big); when neither is known, -1 (``rows_source`` "unknown"; a 0 live-tuple count is not
      taken as "empty": it is also what a statistics reset or crash leaves behind);
    - ``bytes``: pg_total_relation_size (heap + indexes + TOAST);
    - ``live_rows``: n_live_tup, maintained by the statistics system even without ANALYZE;
    - ``writes``: n_tup_ins + n_tup_upd + n_tup_del since the statistics were last reset;
    - ``writes_per_second``: ``writes`` divided by the seconds since ``write_rate_since`` (the
      database's pg_stat_database.stats_reset, or the server start when never reset). It is a
      LONG-RUN AVERAGE, not the current rate: bursts and quiet hours are flattened, and a table
      created after that moment reads lower than it is. None when it cannot be computed.
    """
    if not tables:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid), "
            "pg_stat_get_live_tuples(c.oid), "
            "pg_stat_get_tuples_inserted(c.oid) + pg_stat_get_tuples_updated(c.oid) "
            "+ pg_stat_get_tuples_deleted(c.oid), "
            "w.since, extract(epoch FROM now() - w.since)::float8 "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "CROSS JOIN (SELECT coalesce((SELECT stats_reset FROM pg_stat_database "
            "WHERE datname = current_database()), pg_postmaster_start_time()) AS since) w "
            "WHERE c.relkind IN ('r', 'p') AND c.relname = ANY(%s) AND n.nspname = ANY(current_schemas(false))",
            [sorted(tables)],
        )
        sizes = {}
        for name, rows, size, live, writes, since, elapsed in cursor.fetchall():
            rows, live = int(rows), None if live is None else int(live)
            source = "estimate"
            if rows < 0:
                source = "live_tuples" if live else "unknown"
                rows = live if live else -1
            rate = None
            if writes is not None and elapsed and elapsed > 0:
                rate = round(int(writes) / elapsed, 2)
            sizes[name] = {
                "rows": rows,
                "rows_source": source,
                "bytes": int(size),
                "live_rows": live,
                "writes": None if writes is None else int(writes),
                "writes_per_second": rate,
                "write_rate_since": since.isoformat() if since is not None else None,
            }
        return sizes


# ---------------------------------------------------------------------------
# Data pre-checks: would today's data make a forward operation fail?

PRECHECK_CAP = 1000  # offending rows / duplicate groups counted at most (LIMIT inside each query)


def _fk_target(field):
    """(table, column) a concrete FK / OneToOne with a database constraint points at, else None."""
    if not (field.is_relation and field.concrete and (field.many_to_one or field.one_to_one)):
        return None
    if not getattr(field, "db_constraint", False):
        return None
    return field.remote_field.model._meta.db_table, field.target_field.column


def _precheck_specs(op, app_label, old_state, new_state, connection) -> list[dict]:
    """The data conditions a forward ``op`` needs (plain dicts, Django objects only used here).

    Computed during the walk, where the model states are at hand; run by _prechecks.
    """
    try:
        return _precheck_specs_unchecked(op, app_label, old_state, new_state, connection)
    except Exception:  # noqa: BLE001 - a custom field or an unresolved relation: nothing to check
        return []


def _precheck_specs_unchecked(op, app_label, old_state, new_state, connection) -> list[dict]:
    from django.db import migrations
    from django.db.models import UniqueConstraint

    specs: list[dict] = []
    if isinstance(op, migrations.AlterField):
        model_lower = op.model_name_lower
        old = _get_field(old_state, app_label, model_lower, op.name)
        new = _get_field(new_state, app_label, model_lower, op.name)
        table = _model_table(old_state, app_label, model_lower)
        if old is None or new is None or not table or not getattr(old, "column", None) or not new.concrete:
            return []
        column = old.column  # the data is in the column as it is before this operation
        # With a default (or db_default) Django first UPDATEs the NULL rows to it: nothing can fail.
        backfilled = (new.has_default() and new.default is not None) or bool(
            getattr(new, "has_db_default", lambda: False)()
        )
        if old.null and not new.null and not backfilled:
            specs.append({"kind": "nulls", "table": table, "columns": [column]})
        if not (old.unique or old.primary_key) and (new.unique or new.primary_key):
            specs.append({"kind": "duplicates", "table": table, "columns": [column], "nulls_distinct": True})
        new_ref = _fk_target(new)
        if new_ref and new_ref != _fk_target(old):
            old_type, new_type = old.db_type(connection), new.db_type(connection)
            specs.append(
                {
                    "kind": "orphans",
                    "table": table,
                    "columns": [column],
                    "ref_table": new_ref[0],
                    "ref_column": new_ref[1],
                    # the column's type once altered (a Django type name, never data)
                    "cast": new_type if new_type and old_type != new_type else None,
                }
            )
    elif isinstance(op, migrations.AddConstraint):
        constraint = op.constraint
        if (
            isinstance(constraint, UniqueConstraint)
            and constraint.fields
            and constraint.condition is None
            and not constraint.expressions
        ):
            model = new_state.apps.get_model(app_label, op.model_name_lower)
            specs.append(
                {
                    "kind": "duplicates",
                    "table": model._meta.db_table,
                    "columns": [model._meta.get_field(name).column for name in constraint.fields],
                    "nulls_distinct": getattr(constraint, "nulls_distinct", None) is not False,
                }
            )
    elif isinstance(op, migrations.AlterUniqueTogether):
        key = (app_label, op.name_lower)
        before = {tuple(t) for t in (old_state.models[key].options.get("unique_together") or ())}
        model = old_state.apps.get_model(app_label, op.name_lower)
        for together in new_state.models[key].options.get("unique_together") or ():
            if tuple(together) in before:
                continue
            specs.append(
                {
                    "kind": "duplicates",
                    "table": model._meta.db_table,
                    "columns": [model._meta.get_field(name).column for name in together],
                    "nulls_distinct": True,
                }
            )
    return specs


def _live_columns(connection, tables: set[str]) -> dict[str, set[str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, a.attname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "WHERE c.relkind IN ('r', 'p') AND c.relname = ANY(%s) AND n.nspname = ANY(current_schemas(false))",
            [sorted(tables)],
        )
        live: dict[str, set[str]] = {}
        for table, column in cursor.fetchall():
            live.setdefault(table, set())
            if column:
                live[table].add(column)
        return live


def _precheck_sql(connection, spec: dict) -> str:
    """A count of offending rows (or duplicate groups), capped: only counts leave the database."""
    q = connection.ops.quote_name
    table = q(spec["table"])
    cols = [f"t.{q(c)}" for c in spec["columns"]]
    if spec["kind"] == "nulls":
        inner = f"SELECT 1 FROM {table} t WHERE {cols[0]} IS NULL"
    elif spec["kind"] == "duplicates":
        where = " AND ".join(f"{c} IS NOT NULL" for c in cols) if spec.get("nulls_distinct", True) else "true"
        inner = f"SELECT 1 FROM {table} t WHERE {where} GROUP BY {', '.join(cols)} HAVING count(*) > 1"
    else:  # orphans
        value = f"CAST({cols[0]} AS {spec['cast']})" if spec.get("cast") else cols[0]
        inner = (
            f"SELECT 1 FROM {table} t WHERE {cols[0]} IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM {q(spec['ref_table'])} r WHERE r.{q(spec['ref_column'])} = {value})"
        )
    return f"SELECT count(*) FROM ({inner} LIMIT {PRECHECK_CAP}) s"


def _precheck_message(spec: dict, status: str, found: int, capped: bool, detail: str = "") -> str:
    where = f"{spec['table']}.{spec['columns'][0]}" if len(spec["columns"]) == 1 else (
        f"{spec['table']} ({', '.join(spec['columns'])})"
    )
    count = f"at least {found}" if capped else str(found)
    if status == "fail":
        if spec["kind"] == "nulls":
            return f"{count} NULL value(s) in {where}: SET NOT NULL will fail"
        if spec["kind"] == "duplicates":
            return f"{count} group(s) of duplicate values in {where}: the unique constraint will fail"
        return (
            f"{count} row(s) of {where} with no match in {spec['ref_table']}.{spec['ref_column']}: "
            "the FOREIGN KEY constraint will fail"
        )
    if status == "pass":
        if spec["kind"] == "nulls":
            return f"no NULL in {where}: SET NOT NULL can succeed with today's data"
        if spec["kind"] == "duplicates":
            return f"no duplicate values in {where}: the unique constraint can succeed with today's data"
        return (
            f"every {where} value matches {spec['ref_table']}.{spec['ref_column']}: "
            "the FOREIGN KEY constraint can succeed with today's data"
        )
    return f"{spec['kind']} check on {where} {detail}"


def _run_precheck(connection, spec: dict, timeout_ms: int) -> dict:
    """One capped count in a READ ONLY transaction bounded by statement_timeout, always rolled back."""
    from django.db import DatabaseError, transaction

    result = {"kind": spec["kind"], "table": spec["table"], "columns": list(spec["columns"])}
    if spec["kind"] == "orphans":
        result.update(ref_table=spec["ref_table"], ref_column=spec["ref_column"])
    started = time.monotonic()
    found, status, detail = 0, "pass", ""
    try:
        with transaction.atomic(using=connection.alias):
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION READ ONLY")
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)",
                    [f"{timeout_ms}ms", f"{timeout_ms}ms"],
                )
                cursor.execute(_precheck_sql(connection, spec))
                found = int(cursor.fetchone()[0])
            transaction.set_rollback(True, using=connection.alias)
        status = "fail" if found else "pass"
    except DatabaseError as exc:
        cause = exc.__cause__ or exc
        code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        # 57014 query_canceled (statement_timeout), 55P03 lock_not_available (lock_timeout)
        if code in ("57014", "55P03"):
            status, detail = "timeout", f"did not finish within {timeout_ms} ms: unknown"
        else:
            # never the server's text: it may quote a row's values (personal data)
            status, detail = "error", f"failed with {type(cause).__name__} (SQLSTATE {code or '?'})"
    capped = found >= PRECHECK_CAP
    result.update(
        status=status,
        found=found,
        capped=capped,
        seconds=round(time.monotonic() - started, 3),
        message=_precheck_message(spec, status, found, capped, detail),
    )
    return result


def _skipped_precheck(spec: dict, reason: str) -> dict:
    result = {"kind": spec["kind"], "table": spec["table"], "columns": list(spec["columns"])}
    if spec["kind"] == "orphans":
        result.update(ref_table=spec["ref_table"], ref_column=spec["ref_column"])
    result.update(
        status="skipped", found=0, capped=False, seconds=0.0,
        message=_precheck_message(spec, "skipped", 0, False, f"skipped: {reason}"),
    )
    return result


def _prechecks(connection, migrations: list[dict], timeout_ms: int) -> None:
    """Fill op["prechecks"] for the forward operations whose data conditions can be checked today.

    Only tables and columns that exist in the live database now are queried; a table created or a
    column added (or renamed) earlier in the plan is reported "skipped". Each query runs alone in a
    READ ONLY transaction with SET LOCAL statement_timeout/lock_timeout and is rolled back; a timeout
    or an error is recorded and the next check runs. Only counts are reported, never values.
    """
    timeout_ms = max(1, int(timeout_ms))
    forward = [m for m in migrations if m.get("direction") != "backwards"]
    wanted = set()
    for migration in forward:
        for op in migration["operations"]:
            for spec in op.get("_precheck_specs") or ():
                wanted.add(spec["table"])
                if spec.get("ref_table"):
                    wanted.add(spec["ref_table"])
    if not wanted:
        return
    live = _live_columns(connection, wanted)
    data_changes: list[tuple[str, set[str] | None]] = []  # earlier RunPython / RunSQL of the plan
    for migration in forward:
        for op in migration["operations"]:
            checks = []
            new_tables = set(op.get("new_tables") or ())
            for spec in op.get("_precheck_specs") or ():
                table, ref = spec["table"], spec.get("ref_table")
                if table in new_tables:
                    continue  # created by this plan: only the plan's own data is in it
                missing = [c for c in spec["columns"] if c not in live.get(table, ())]
                if table not in live:
                    checks.append(_skipped_precheck(spec, f"table {table} is not in the database now "
                                                          "(created or renamed earlier in this plan)"))
                elif missing:
                    checks.append(_skipped_precheck(spec, f"column {table}.{missing[0]} is not in the database "
                                                          "now (added or renamed earlier in this plan)"))
                elif ref and spec["ref_column"] not in live.get(ref, ()):
                    checks.append(_skipped_precheck(spec, f"referenced {ref}.{spec['ref_column']} is not in the "
                                                          "database now (created earlier in this plan)"))
                else:
                    check = _run_precheck(connection, spec, timeout_ms)
                    earlier = [mid for mid, tables in data_changes if tables is None or table in tables]
                    if earlier:
                        check["earlier_data_migrations"] = sorted(set(earlier))
                        if check["status"] == "fail":
                            check["message"] += (
                                f" (unless an earlier data migration of this plan fixes the data: "
                                f"{', '.join(check['earlier_data_migrations'])})"
                            )
                    checks.append(check)
            if checks:
                op["prechecks"] = checks
            if op.get("type") == "RunPython":
                data_changes.append((migration["id"], None))
            elif op.get("type") == "RunSQL":
                data_changes.append((migration["id"], set(op.get("tables") or ()) or None))


def _plan_prechecks(connection, migrations: list[dict], request: dict) -> bool:
    """Run the data pre-checks when asked; always drop the walk's private specs. True when they ran."""
    ran = bool(request.get("prechecks"))
    try:
        if ran:
            _prechecks(connection, migrations, int(request.get("precheck_timeout_ms") or 5000))
    finally:
        for migration in migrations:
            for op in migration.get("operations") or ():
                op.pop("_precheck_specs", None)
    return ran


def _missing_migrations() -> dict:
    """What ``makemigrations --check`` would create, as {app_label: [names]}."""
    from django.apps import apps
    from django.db.migrations.autodetector import MigrationAutodetector
    from django.db.migrations.loader import MigrationLoader
    from django.db.migrations.questioner import MigrationQuestioner
    from django.db.migrations.state import ProjectState

    loader = MigrationLoader(None, ignore_no_migrations=True)
    # The base questioner never prompts nor exits (the non-interactive one
    # exits on a NOT NULL field without default); dry_run writes nothing.
    autodetector = MigrationAutodetector(
        loader.project_state(),
        ProjectState.from_apps(apps),
        MigrationQuestioner(specified_apps=set(), dry_run=True),
    )
    changes = autodetector.changes(graph=loader.graph)
    return {
        app: [
            {"name": m.name, "operations": [op.describe() for op in m.operations]}
            for m in migrations
        ]
        for app, migrations in sorted(changes.items())
    }


def _executor(connection, progress_callback=None):
    from django.db.migrations.exceptions import BadMigrationError, InconsistentMigrationHistory, NodeNotFoundError
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connection, progress_callback)
        executor.loader.check_consistent_history(connection)
    except InconsistentMigrationHistory as exc:
        raise HelperError("inconsistent_history", f"inconsistent migration history: {exc}") from exc
    except (NodeNotFoundError, BadMigrationError, ImportError, SyntaxError) as exc:
        raise HelperError("migration_graph", f"cannot load the migration graph: {type(exc).__name__}: {exc}") from exc
    conflicts = executor.loader.detect_conflicts()
    if conflicts:
        names = "; ".join(f"{', '.join(v)} in {k}" for k, v in sorted(conflicts.items()))
        raise HelperError(
            "migration_conflict",
            f"conflicting migrations (several leaf nodes): {names}. Run 'manage.py makemigrations --merge'.",
        )
    return executor


def _pending_plan(executor):
    return executor.migration_plan(executor.loader.graph.leaf_nodes())


def _migration_file(migration):
    """Absolute path of the module a migration was loaded from (no file access), or None."""
    module = sys.modules.get(type(migration).__module__)
    path = getattr(module, "__file__", None)
    return os.path.abspath(path) if path else None


# ---------------------------------------------------------------------------
# Deploy phases and the plan digest (shared by the planner and migrate)

PHASES = ("pre", "post")


def _migration_phase(migration, post_ids=()) -> str:
    """"post" when the Migration class says ``safedeploy_phase = "post"`` or its id (or the id of a
    migration it replaces) is in ``post_ids``; else "pre". Any other attribute value is an error."""
    mid = f"{migration.app_label}.{migration.name}"
    value = getattr(migration, "safedeploy_phase", None)
    if value is not None and value not in PHASES:
        raise HelperError(
            "bad_phase",
            f"migration {mid} has safedeploy_phase = {value!r}: set it to \"pre\" or \"post\" in its Migration "
            "class (or remove it: a migration is \"pre\" unless it says otherwise).",
            migration=mid,
        )
    post_ids = set(post_ids or ())
    if value == "post" or mid in post_ids:
        return "post"
    if any(f"{a}.{n}" in post_ids for a, n in (migration.replaces or ())):
        return "post"
    return "pre"


def _check_post_ids(loader, post_ids) -> None:
    """Every id of post_migrations must name a migration on disk: a typo would run a destructive
    migration in the pre phase."""
    unknown = []
    for mid in post_ids or ():
        app_label, _dot, name = str(mid).partition(".")
        if (app_label, name) not in loader.disk_migrations and (app_label, name) not in loader.graph.nodes:
            unknown.append(str(mid))
    if unknown:
        raise HelperError(
            "bad_phase",
            f"post_migrations names {', '.join(repr(m) for m in unknown)}, which is not a migration of this "
            "project: give each as app_label.migration_name (e.g. shop.0007_remove_order_legacy) or remove it.",
        )


def _phase_selection(executor, plan, phase: str, post_ids=()):
    """Split a forward plan for a deploy phase: (selected plan items, deferred, post_pending).

    ``all`` and ``post`` select everything pending. ``pre`` selects the pre migrations that do not
    depend, through pending migrations, on a pending post migration; those that do are deferred
    (``{id, reason}``), and the pending post migrations are listed in post_pending.
    """
    phases = {(m.app_label, m.name): _migration_phase(m, post_ids) for m, _backwards in plan}
    if phase != "pre":
        return list(plan), [], []
    graph = executor.loader.graph
    waits_for: dict[tuple, tuple[str, list[str]]] = {}  # key -> (post migration id, deferred ids in between)
    selected, deferred, post_pending = [], [], []
    for migration, backwards in plan:  # plan order: parents first
        key = (migration.app_label, migration.name)
        mid = f"{key[0]}.{key[1]}"
        if phases[key] == "post":
            waits_for[key] = (mid, [])
            post_pending.append(mid)
            continue
        node = graph.node_map.get(key)
        cause = None
        for parent in sorted(node.parents, key=lambda n: n.key) if node is not None else ():
            if parent.key in waits_for:
                post_id, via = waits_for[parent.key]
                if phases.get(parent.key) != "post":  # a deferred pre migration in between
                    via = [*via, f"{parent.key[0]}.{parent.key[1]}"]
                cause = (post_id, via)
                break
        if cause is None:
            selected.append((migration, backwards))
            continue
        waits_for[key] = cause
        post_id, via = cause
        reason = f"depends on the post-deploy migration {post_id}"
        if via:
            reason += f" (through {', '.join(via)})"
        deferred.append({"id": mid, "reason": reason + ": it runs in phase post"})
    return selected, deferred, post_pending


def _migration_file_sha256(migration) -> str:
    path = _migration_file(migration)
    if not path:
        return "nofile"
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return "nofile"


def _plan_digest(plan_items) -> str:
    """sha256 over "app_label.name<TAB>sha256 of the migration file (or nofile)<LF>" in plan order.

    ``plan_items``: migrations or (migration, backwards) pairs. Equal digests mean the same
    migrations, in the same order, from the same files.
    """
    digest = hashlib.sha256()
    for item in plan_items:
        migration = item[0] if isinstance(item, (tuple, list)) else item
        line = f"{migration.app_label}.{migration.name}\t{_migration_file_sha256(migration)}\n"
        digest.update(line.encode("utf-8"))
    return digest.hexdigest()


def _names_list(names, limit: int = 20) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "") if names else "(none)"


def _target_plan(executor, target):
    """The plan of ``manage.py migrate [app_label [name]]``, with the target resolved like migrate does.

    Returns (plan, migration_target). Without a target: every leaf node (all pending
    migrations). ``name`` may be ``zero`` (unapply the whole app) or a unique prefix.
    """
    if not target:
        return _pending_plan(executor), None
    from django.apps import apps
    from django.db.migrations.exceptions import AmbiguityError, NodeNotFoundError

    loader = executor.loader
    app_label = str(target.get("app_label") or "").strip()
    name = str(target.get("name") or "").strip()
    migrated = _names_list(loader.migrated_apps)
    try:
        apps.get_app_config(app_label)
    except LookupError:
        raise HelperError(
            "bad_target",
            f"target_migration: there is no installed app with label '{app_label}'. "
            f"Set app_label to one of the apps with migrations: {migrated}.",
        ) from None
    if app_label not in loader.migrated_apps:
        raise HelperError(
            "bad_target",
            f"target_migration: the app '{app_label}' has no migrations. "
            f"Set app_label to one of the apps with migrations: {migrated}.",
        )
    on_disk = [n for a, n in loader.disk_migrations if a == app_label]
    if not name:
        raise HelperError(
            "bad_target",
            f"target_migration: name is empty. Set it to a migration of '{app_label}' (or a unique prefix of one, "
            f"e.g. 0003), or to 'zero' to unapply all of its migrations. Its migrations: {_names_list(on_disk)}.",
        )
    if name == "zero":
        key = (app_label, None)
    else:
        try:
            migration = loader.get_migration_by_prefix(app_label, name)
        except AmbiguityError:
            matches = [n for n in on_disk if n.startswith(name)]
            raise HelperError(
                "bad_target",
                f"target_migration: more than one migration of '{app_label}' starts with '{name}' "
                f"({_names_list(matches)}). Give more of the name.",
            ) from None
        except KeyError:
            raise HelperError(
                "bad_target",
                f"target_migration: the app '{app_label}' has no migration matching '{name}'. Set name to one of "
                f"its migrations (or a unique prefix), or to 'zero': {_names_list(on_disk)}.",
            ) from None
        key = (app_label, migration.name)
        # Like migrate: a partially applied squashed migration is not in the graph, use its last replacement.
        if key not in loader.graph.nodes and key in loader.replacements:
            key = tuple(loader.replacements[key].replaces[-1])
    try:
        plan = executor.migration_plan([key])
    except NodeNotFoundError as exc:
        squashes = [f"{a}.{n}" for (a, n), m in loader.replacements.items() if key in [tuple(r) for r in m.replaces]]
        hint = (
            f" It is replaced by {', '.join(squashes)} on this database: target the squashed migration instead."
            if squashes
            else ""
        )
        raise HelperError(
            "bad_target",
            f"target_migration: {key[0]}.{key[1]} is not a node of the migration graph ({exc}).{hint}",
        ) from exc
    return plan, {"app_label": key[0], "name": key[1]}


def _plan_direction(plan) -> str:
    kinds = {bool(backwards) for _migration, backwards in plan}
    if not kinds:
        return "none"
    if len(kinds) > 1:
        raise HelperError(
            "bad_target",
            "the plan mixes forwards and backwards migrations, which migrate does not support: "
            "split it into separate targets.",
        )
    return "backwards" if True in kinds else "forwards"


def _states_before_unapply(executor, plan) -> dict:
    """The project state before each migration of a backwards plan (MigrationExecutor._migrate_all_backwards)."""
    full_plan = executor.migration_plan(executor.loader.graph.leaf_nodes(), clean_start=True)
    to_run = {migration for migration, _backwards in plan}
    graph = executor.loader.graph
    applied = {graph.nodes[key] for key in executor.loader.applied_migrations if key in graph.nodes}
    states = {}
    state = executor._create_project_state()
    for migration, _backwards in full_plan:
        if not to_run:
            break
        if migration in to_run:
            if "apps" not in state.__dict__:
                state.apps  # noqa: B018 - render once, like migrate
            states[migration] = state
            state = migration.mutate_state(state, preserve=True)
            to_run.remove(migration)
        elif migration in applied:
            migration.mutate_state(state, preserve=False)
    return states


def _walk_backwards(executor, plan, connection) -> list[dict]:
    """Facts and backwards SQL of a plan that unapplies migrations, as migrate would unapply them.

    The state before each migration is computed from the full plan like
    MigrationExecutor._migrate_all_backwards; each migration is walked like
    Migration.unapply(collect_sql=True): the states of its operations first, then
    the operations in reverse order. An irreversible operation is recorded
    (reversible false, sql_error "IrreversibleError: ...") and the walk goes on.
    Correctness over speed: backwards plans are rare.
    """
    from django.db import migrations as django_migrations
    from django.db.migrations.exceptions import IrreversibleError

    states = _states_before_unapply(executor, plan)
    result = []
    for migration, _backwards in plan:
        app_label = migration.app_label
        steps = []
        new_state = states[migration]
        for index, op in enumerate(migration.operations):
            new_state = new_state.clone()
            old_state = new_state.clone()
            op.state_forwards(app_label, new_state)
            steps.insert(0, (index, op, old_state, new_state))
        operations = []
        deferred_owner: dict[int, int] = {}
        editor = connection.schema_editor(collect_sql=True, atomic=False)
        editor.__enter__()
        try:
            for index, op, to_state, from_state in steps:
                before = len(editor.collected_sql)
                deferred_before = {id(s) for s in editor.deferred_sql}
                reversible = bool(op.reversible)
                sql_error = None
                if not reversible:
                    sql_error = (
                        f"IrreversibleError: operation {index} ({op.describe()}) of {app_label}.{migration.name} "
                        "is not reversible"
                    )
                elif op.reduces_to_sql:
                    try:
                        op.database_backwards(app_label, editor, from_state, to_state)
                    except IrreversibleError as exc:
                        reversible = False
                        sql_error = f"IrreversibleError: {_first_line(str(exc))}"
                    except Exception as exc:  # noqa: BLE001 - recorded, walk continues
                        sql_error = f"{type(exc).__name__}: {_first_line(str(exc))}"
                # Facts describe the operation as written: old = state before it, new = after it.
                facts = _operation_facts(op, app_label, to_state, from_state, connection)
                facts["reversible"] = reversible
                if isinstance(op, django_migrations.RunSQL):
                    facts["run_sql"] = {
                        "sql": _sql_text(op.reverse_sql),
                        "reverse_sql_given": op.reverse_sql is not None,
                    }
                if isinstance(op, django_migrations.RunPython):
                    code = op.reverse_code
                    facts["run_python"] = {
                        "code": _callable_name(code) if code is not None else None,
                        "reverse_code_given": code is not None,
                    }
                facts["index"] = index
                facts["sql"] = list(editor.collected_sql[before:])
                facts["sql_error"] = sql_error
                for statement in editor.deferred_sql:
                    if id(statement) not in deferred_before:
                        deferred_owner[id(statement)] = len(operations)
                operations.append(facts)
        finally:
            _close_editor(editor, operations, deferred_owner)
        for facts in operations:
            tables = _touched_tables(facts)
            facts["tables"] = sorted(tables)
            facts["new_tables"] = []
            facts["created_in_plan"] = False
        result.append(
            {
                **_migration_item(migration, "backwards"),
                "reversible": all(op["reversible"] for op in operations),
                "operations": operations,
            }
        )
    return result


def action_plan(request: dict) -> dict:
    from django.db import DatabaseError

    connection = _connect(request.get("database") or "default")
    try:
        target = _fingerprint(connection)
        executor = _executor(connection)
        plan, migration_target = _target_plan(executor, request.get("target"))
        direction = _plan_direction(plan)
        post_ids = list(request.get("post_migrations") or [])
        _check_post_ids(executor.loader, post_ids)
        started = time.monotonic()
        if direction == "backwards":
            migrations = _walk_backwards(executor, plan, connection)
        else:
            migrations = _walk_plan(executor, plan, connection, post_ids)
        walk_seconds = time.monotonic() - started
        tables = set()
        for migration in migrations:
            for op in migration["operations"]:
                tables.update(op["tables"])
        sizes = _table_sizes(connection, tables)
        prechecks_ran = _plan_prechecks(connection, migrations, request)
    except DatabaseError as exc:
        raise HelperError("db_error", f"database error while planning: {_first_line(str(exc))}") from exc
    missing = _missing_migrations() if request.get("check_missing", True) else {}
    return {
        "ok": True,
        "target": target,
        "direction": direction,
        "migration_target": migration_target,
        "plan": migrations,
        "missing_migrations": missing,
        "tables": sizes,
        "timings": {"walk_seconds": round(walk_seconds, 3)},
        "prechecks_ran": prechecks_ran,
        # what django_migrate_once compares with expected_plan_digest (forward plans only)
        "plan_digest": _plan_digest(plan) if direction != "backwards" else None,
        "plan_digests": (
            {"all": _plan_digest(plan), "pre": _plan_digest(_phase_selection(executor, plan, "pre", post_ids)[0])}
            if direction != "backwards"
            else None
        ),
    }


# ---------------------------------------------------------------------------
# Migrate once, under an advisory lock held by a separate session


def _lock_holders(lock_conn, key: int) -> list[dict]:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    with lock_conn.cursor() as cursor:
        cursor.execute(
            "SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start::text, a.usename, a.state "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid::bigint = %s AND l.objid::bigint = %s "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [unsigned >> 32, unsigned & 0xFFFFFFFF],
        )
        return [
            {
                "pid": pid,
                "application_name": app,
                "client_addr": addr,
                "backend_start": start,
                "user": user,
                "state": state,
            }
            for pid, app, addr, start, user, state in cursor.fetchall()
        ]


def _try_lock(lock_conn, key: int) -> bool:
    with lock_conn.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        return bool(cursor.fetchone()[0])


def _unlock(lock_conn, key: int) -> None:
    with lock_conn.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def _describe_holders(holders: list[dict]) -> str:
    if not holders:
        return "the holder ended before it could be named"
    return "; ".join(
        f"pid {h['pid']} application_name '{h['application_name']}' from {h['client_addr'] or 'local socket'} "
        f"(user {h['user']}, session started {h['backend_start']})"
        for h in holders
    )


def _check_expected(target: dict, expected: dict, allow_replica: bool) -> None:
    mismatches = []
    for key in ("host", "port", "database", "user", "system_identifier"):
        want = (expected or {}).get(key)
        if want is None or want == "":
            continue
        have = target.get(key)
        if str(want) != str(have):
            mismatches.append(f"{key}: expected '{want}', connected to '{have}'")
    if mismatches:
        raise HelperError(
            "target_mismatch",
            "refusing to migrate: the database is not the expected one (" + "; ".join(mismatches) + ")",
            target=target,
        )
    if target.get("in_recovery") and not allow_replica:
        raise HelperError(
            "replica",
            f"refusing to migrate: {target.get('host')}:{target.get('port')}/{target.get('database')} is a "
            "replica in recovery (pg_is_in_recovery() is true). Point the app at the primary.",
            target=target,
        )


def _set_timeouts(connection, request: dict) -> None:
    from django.db import DatabaseError

    for name in ("lock_timeout", "statement_timeout"):
        value = request.get(name)
        if value is None:
            continue
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config(%s, %s, false)", [name, str(value)])
        except DatabaseError as exc:
            raise HelperError("bad_setting", f"PostgreSQL rejected {name}='{value}': {_first_line(str(exc))}") from exc


def _migrate_command_class():
    from django.core.management.commands import migrate

    class RecordingMigrate(migrate.Command):
        """Django's own migrate, which also records when each migration starts and ends."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.applied: list[dict] = []
            self.unapplied: list[dict] = []  # target_migration: migrated backwards
            self.current: str | None = None
            self.current_atomic: bool | None = None
            self._started = 0.0

        def migration_progress_callback(self, action, migration=None, fake=False):
            if action in ("apply_start", "unapply_start"):
                self.current = f"{migration.app_label}.{migration.name}"
                self.current_atomic = bool(migration.atomic)
                self._started = time.monotonic()
            elif action in ("apply_success", "unapply_success"):
                done = self.applied if action == "apply_success" else self.unapplied
                done.append(
                    {"id": self.current, "seconds": round(time.monotonic() - self._started, 3), "fake": bool(fake)}
                )
                self.current = None
            return super().migration_progress_callback(action, migration, fake)

    return RecordingMigrate


# -- migrate: retries, blockers, INVALID indexes, phases, verification


_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout fired
_QUERY_CANCELED = "57014"  # statement_timeout fired (or a cancel): never retried
_CREATE_INDEX_CONCURRENTLY = re.compile(
    r'\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?(?!ON\b)("(?:[^"]|"")+"|[^\s("]+)\s+ON\b',
    re.I,
)
_PASSWORD_LITERAL = re.compile(r"""(\bPASSWORD\b\s*(?:=\s*)?)('(?:[^']|'')*'|"(?:[^"]|"")*"|\S+)""", re.I)
WATCH_INTERVAL = 0.2
BLOCKER_QUERY_CHARS = 200


def _sqlstate(exc) -> str | None:
    """The SQLSTATE of a database error, looked for along the exception chain (Django wraps the driver's)."""
    seen = set()
    current = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if code:
            return str(code)
        current = current.__cause__ or current.__context__
    return None


def _backend_pid(connection) -> int | None:
    raw = connection.connection
    with contextlib.suppress(Exception):
        return int(raw.info.backend_pid)  # psycopg 3
    with contextlib.suppress(Exception):
        return int(raw.get_backend_pid())  # psycopg 2
    with contextlib.suppress(Exception), connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])
    return None


def _set_session_guards(connection) -> None:
    """PostgreSQL >= 14: notice a vanished client (runner killed with -9) within a second, and roll back,
    instead of running the statement to its end."""
    from django.db import DatabaseError

    if (getattr(connection, "pg_version", 0) or 0) < 140000:
        return
    # not supported on every platform: best effort
    with contextlib.suppress(DatabaseError), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('client_connection_check_interval', '1s', false)")


def _blocker_query(text, secrets) -> str | None:
    """Another session's query text, safe to show: secrets masked, PASSWORD literals masked,
    whitespace collapsed, at most 200 characters (masked before cutting, so no secret is cut in half)."""
    if text is None:
        return None
    text = scrub(str(text), secrets)
    text = _PASSWORD_LITERAL.sub(lambda m: m.group(1) + "********", text)
    text = " ".join(text.split())
    return text[:BLOCKER_QUERY_CHARS]


class _BlockerWatcher:
    """Polls pg_blocking_pids(<migrating backend>) every 0.2 s from its own connection, and records
    each distinct session that blocked the migration. Never fails the migration: errors are recorded."""

    def __init__(self, connection, interval: float = WATCH_INTERVAL):
        import threading

        self._source = connection
        self.interval = interval
        self.pid: int | None = None
        self.attempt = 0
        self.blockers: dict[int, dict] = {}
        self.by_attempt: dict[int, list[int]] = {}
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="safedeploy-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        secrets = _known_secrets()
        watch = None
        failures = 0
        try:
            watch = self._source.copy()  # a wrapper of this thread, with its own session
            watch.ensure_connection()
            with watch.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('application_name', %s, false), set_config('statement_timeout', '5s', false), "
                    "set_config('lock_timeout', '1s', false)",
                    [f"safedeploy.watch {socket.gethostname()} pid {os.getpid()}"[:63]],
                )
            while not self._stop.is_set():
                if self.pid:
                    try:
                        self._poll(watch, self.pid, self.attempt, secrets)
                        failures = 0
                    except Exception as exc:  # noqa: BLE001 - watching is best effort
                        self.error = f"{type(exc).__name__}: {_first_line(str(exc))}"
                        failures += 1
                        if failures >= 5:
                            return
                self._stop.wait(self.interval)
        except Exception as exc:  # noqa: BLE001
            self.error = f"{type(exc).__name__}: {_first_line(str(exc))}"
        finally:
            if watch is not None:
                with contextlib.suppress(Exception):
                    watch.close()

    def _poll(self, watch, pid: int, attempt: int, secrets) -> None:
        with watch.cursor() as cursor:
            cursor.execute(
                "SELECT a.pid, a.application_name, a.usename, host(a.client_addr), a.state, "
                "extract(epoch FROM now() - a.xact_start)::float8, a.query, a.wait_event_type, a.wait_event "
                "FROM pg_stat_activity a WHERE a.pid = ANY(pg_blocking_pids(%s)) ORDER BY a.pid",
                [pid],
            )
            rows = cursor.fetchall()
        for bpid, app, user, addr, state, age, query, wait_type, wait_event in rows:
            age = None if age is None else round(float(age), 3)
            seen = self.by_attempt.setdefault(attempt, [])
            if bpid not in seen:
                seen.append(bpid)
            known = self.blockers.get(bpid)
            if known is not None:
                if age is not None and (known["xact_age_seconds"] or 0) < age:
                    known["xact_age_seconds"] = age
                continue
            self.blockers[bpid] = {
                "pid": bpid,
                "application_name": app,
                "user": user,
                "client_addr": addr,
                "state": state,
                "xact_age_seconds": age,
                "query": _blocker_query(query, secrets),
                "wait_event_type": wait_type,
                "wait_event": wait_event,
                "seen_at": attempt,
            }


def _describe_blockers(blockers: list[dict]) -> str:
    parts = []
    for b in blockers:
        age = f", transaction open for {b['xact_age_seconds']:g}s" if b.get("xact_age_seconds") is not None else ""
        parts.append(
            f"pid {b['pid']} (application_name '{b.get('application_name') or ''}', user {b.get('user')}, "
            f"from {b.get('client_addr') or 'local socket'}, state '{b.get('state')}'{age}, "
            f"query: {b.get('query') or '?'})"
        )
    return "; ".join(parts)


def _concurrent_index_names(migration) -> set[str]:
    """Names of the indexes a migration builds CONCURRENTLY (AddIndexConcurrently, RunSQL CREATE INDEX
    CONCURRENTLY, also inside SeparateDatabaseAndState): what a failed build may leave INVALID."""
    from django.db import migrations as ops

    names: set[str] = set()

    def visit(op):
        if any(cls.__name__ == "AddIndexConcurrently" for cls in type(op).__mro__):
            name = getattr(getattr(op, "index", None), "name", None)
            if name:
                names.add(str(name))
        elif isinstance(op, ops.RunSQL):
            for statement in _sql_text(op.sql):
                for match in _CREATE_INDEX_CONCURRENTLY.finditer(statement):
                    ident = match.group(1)
                    names.add(ident[1:-1].replace('""', '"') if ident.startswith('"') else ident.lower())
        elif isinstance(op, ops.SeparateDatabaseAndState):
            for sub in op.database_operations:
                visit(sub)

    for op in migration.operations:
        with contextlib.suppress(Exception):  # a custom operation we cannot read: nothing to clean up
            visit(op)
    return names


def _invalid_indexes(connection) -> list[dict]:
    """INVALID indexes (pg_index.indisvalid = false) in the current schemas, except those being built now."""
    building = ""
    if (getattr(connection, "pg_version", 0) or 0) >= 120000:
        building = "AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid) "
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n.nspname, c.relname, t.relname FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_class t ON t.oid = i.indrelid "
            "WHERE NOT i.indisvalid AND n.nspname = ANY(current_schemas(false)) " + building + "ORDER BY 1, 2"
        )
        return [{"schema": s, "name": n, "table": t} for s, n, t in cursor.fetchall()]


class _DropFailed(Exception):
    def __init__(self, migration_id: str, index: str, error: Exception):
        super().__init__(f"DROP INDEX CONCURRENTLY {index} (left INVALID by {migration_id}) failed: {error}")
        self.migration_id = migration_id
        self.index = index
        self.error = error


def _drop_invalid_indexes(connection, owners: dict[str, str]) -> list[str]:
    """DROP INDEX CONCURRENTLY IF EXISTS the INVALID indexes whose names are in ``owners``
    (index name -> the pending migration that builds it). Outside a transaction (autocommit)."""
    from django.db import DatabaseError

    if not owners:
        return []
    dropped = []
    q = connection.ops.quote_name
    for index in _invalid_indexes(connection):
        if index["name"] not in owners:
            continue
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {q(index['schema'])}.{q(index['name'])}")
        except DatabaseError as exc:
            raise _DropFailed(owners[index["name"]], index["name"], exc) from exc
        dropped.append(index["name"])
    return dropped


def _call_migrate(alias: str, selected_keys: set, target: dict | None = None):
    """Django's own migrate command (signals included), its plan limited to ``selected_keys``;
    with ``target`` ({app_label, name}) it is ``migrate app_label name`` (backwards).

    The command builds its executor from its module's MigrationExecutor: for the call, that name
    points at a subclass whose plan (not the clean-start full plan) keeps the selected migrations
    only, in migrate's order. Returns (command, output text, exception or None).
    """
    import io

    from django.core.management import call_command
    from django.core.management.commands import migrate as migrate_module

    base = migrate_module.MigrationExecutor

    class PhaseExecutor(base):
        def migration_plan(self, targets, clean_start=False):
            plan = super().migration_plan(targets, clean_start=clean_start)
            if clean_start:
                return plan
            return [(m, backwards) for m, backwards in plan if (m.app_label, m.name) in selected_keys]

    command = _migrate_command_class()()
    output = io.StringIO()
    error = None
    migrate_module.MigrationExecutor = PhaseExecutor
    try:
        args = [target["app_label"], target.get("name") or "zero"] if target else []
        call_command(command, *args, database=alias, interactive=False, verbosity=1, stdout=output, stderr=output)
    except Exception as exc:  # noqa: BLE001 - a half-applied state must be reported
        error = exc
    finally:
        migrate_module.MigrationExecutor = base
    return command, output.getvalue(), error


def _backoff(retry_delay: float, attempt: int) -> float:
    import random

    return min(30.0, retry_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def _migrate_with_retries(connection, alias: str, selected: list, request: dict, reply: dict, watcher) -> dict | None:
    """Run migrate for ``selected``; on lock_timeout (55P03) back off and run it again, up to ``retries`` times.

    Before every attempt, the INVALID indexes left by a failed CONCURRENTLY build of a still-pending
    non-atomic migration are dropped. Fills reply's applied/attempts; returns the final failure or None.
    """
    retries = max(0, int(request.get("retries", 3) or 0))
    retry_delay = max(0.0, float(request.get("retry_delay", 2.0) or 0.0))
    selected_keys = {(m.app_label, m.name) for m, _backwards in selected}
    applied: list[dict] = reply["applied"]
    attempts: list[dict] = reply["attempts"]
    number = 0
    while True:
        number += 1
        watcher.attempt = number
        started = time.monotonic()
        attempt = {"attempt": number, "applied": [], "failed": None, "invalid_indexes_dropped": [],
                   "blockers": [], "seconds": 0.0, "backoff_seconds": None}
        attempts.append(attempt)
        done = {a["id"] for a in applied}
        owners = {}
        for migration, _backwards in selected:
            mid = f"{migration.app_label}.{migration.name}"
            if mid not in done and not migration.atomic:
                for name in _concurrent_index_names(migration):
                    owners.setdefault(name, mid)
        error = failed = None
        try:
            attempt["invalid_indexes_dropped"] = _drop_invalid_indexes(connection, owners)
        except _DropFailed as exc:
            error = exc.error
            failed = {"id": exc.migration_id, "atomic": False,
                      "error": f"{type(exc.error).__name__}: {str(exc).strip()}"}
        if error is None:
            watcher.pid = _backend_pid(connection)
            command, output, error = _call_migrate(alias, selected_keys, request.get("target"))
            reply["output"] = output[-4000:]
            for item in command.applied:
                applied.append(dict(item, attempt=number))
                attempt["applied"].append(item["id"])
            for item in command.unapplied:
                reply.setdefault("unapplied", []).append(dict(item, attempt=number))
                attempt.setdefault("unapplied", []).append(item["id"])
            if error is not None:
                failed = {"id": command.current, "atomic": command.current_atomic,
                          "error": f"{type(error).__name__}: {str(error).strip()}"}
        attempt["seconds"] = round(time.monotonic() - started, 3)
        attempt["blockers"] = list(watcher.by_attempt.get(number, []))
        if error is None:
            return None
        code = _sqlstate(error)
        failed["sqlstate"] = code
        attempt["failed"] = failed
        if code != _LOCK_NOT_AVAILABLE or number > retries:
            return dict(failed, exception=error)
        delay = _backoff(retry_delay, number)
        attempt["backoff_seconds"] = round(delay, 3)
        time.sleep(delay)


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        import math

        return value if math.isfinite(value) else str(value)
    return str(value)


def _check_matches(got, expect) -> bool:
    """Equal as text (str(got) == str(expect)) or as numbers."""
    from decimal import Decimal, InvalidOperation

    if str(got) == str(expect):
        return True
    if isinstance(got, bool) or isinstance(expect, bool) or got is None or expect is None:
        return False
    try:
        return Decimal(str(got)) == Decimal(str(expect))
    except (InvalidOperation, ValueError):
        return False


def _run_check(connection, check: dict, timeout_ms: int) -> dict:
    """One user check: its SQL in a READ ONLY transaction under statement_timeout, always rolled back.
    ``got`` is the first column of the first row (null without a row)."""
    from django.db import DatabaseError, transaction

    result = {"name": check.get("name"), "sql": check.get("sql"), "expect": check.get("expect"), "got": None,
              "status": "error", "seconds": 0.0, "message": ""}
    started = time.monotonic()
    try:
        with transaction.atomic(using=connection.alias):
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION READ ONLY")
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)",
                    [f"{timeout_ms}ms", f"{timeout_ms}ms"],
                )
                cursor.execute(str(check.get("sql") or ""))
                row = cursor.fetchone() if cursor.description else None
            transaction.set_rollback(True, using=connection.alias)
        got = _jsonable(row[0]) if row else None
        result["got"] = got
        if _check_matches(got, check.get("expect")):
            result.update(status="pass", message=f"got {got!r} as expected")
        else:
            result.update(status="fail", message=f"expected {check.get('expect')!r}, got {got!r}")
    except DatabaseError as exc:
        code = _sqlstate(exc)
        if code in (_QUERY_CANCELED, _LOCK_NOT_AVAILABLE):
            detail = f"did not finish within check_timeout ({timeout_ms} ms)"
        else:
            detail = f"{type(exc.__cause__ or exc).__name__}: {_first_line(str(exc))}"
        result["message"] = f"error (SQLSTATE {code or '?'}): {detail}"
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _skipped_checks(checks: list, reason: str) -> list[dict]:
    return [
        {"name": c.get("name"), "sql": c.get("sql"), "expect": c.get("expect"), "got": None, "status": "skipped",
         "seconds": 0.0, "message": f"skipped: {reason}"}
        for c in checks
    ]


def _verify(connection, request: dict, phase: str, post_ids, skip_checks: str | None = None) -> dict:
    """After migrate, still under the lock: nothing pending for the phase, no INVALID index, user checks pass."""
    from django.db import DatabaseError

    checks = list(request.get("checks") or [])
    timeout_ms = max(1, int(float(request.get("check_timeout", 30) or 30) * 1000))
    verification = {"ok": False, "pending_after": [], "invalid_indexes": [], "checks": []}
    try:
        executor = _executor(connection)
        if request.get("target"):  # unapplied down to the target: nothing of its plan is left
            selected = _target_plan(executor, request["target"])[0]
        else:
            selected, _deferred, _post = _phase_selection(executor, _pending_plan(executor), phase, post_ids)
        verification["pending_after"] = [f"{m.app_label}.{m.name}" for m, _backwards in selected]
        verification["invalid_indexes"] = [i["name"] for i in _invalid_indexes(connection)]
    except (DatabaseError, HelperError) as exc:
        verification["error"] = f"{type(exc).__name__}: {_first_line(str(exc))}"
    if skip_checks:
        verification["checks"] = _skipped_checks(checks, skip_checks)
    else:
        verification["checks"] = [_run_check(connection, check, timeout_ms) for check in checks]
    verification["ok"] = (
        "error" not in verification
        and not verification["pending_after"]
        and not verification["invalid_indexes"]
        and all(c["status"] in ("pass", "skipped") for c in verification["checks"])
    )
    return verification


def _verification_problems(verification: dict, phase: str) -> list[str]:
    problems = []
    for check in verification.get("checks") or ():
        if check["status"] == "fail":
            problems.append(f"check '{check['name']}' expected {check['expect']!r}, got {check['got']!r}")
        elif check["status"] == "error":
            problems.append(f"check '{check['name']}' {check['message']}")
    if verification.get("pending_after"):
        problems.append(f"still pending for {phase}: {', '.join(verification['pending_after'])}")
    if verification.get("invalid_indexes"):
        problems.append(
            f"INVALID index(es) (a failed CREATE INDEX CONCURRENTLY; drop and rebuild them): "
            f"{', '.join(verification['invalid_indexes'])}"
        )
    if verification.get("error"):
        problems.append(f"verification could not read the database: {verification['error']}")
    return problems


def _failure_message(failure: dict, applied: list[dict], attempts: list[dict], blockers: list[dict],
                     request: dict) -> str:
    exc = failure["exception"]
    message = (
        f"migration {failure['id'] or '(before any migration started)'} failed: {type(exc).__name__}: "
        f"{_first_line(str(exc))}. Applied before the failure: {', '.join(a['id'] for a in applied) or 'nothing'}."
    )
    if failure.get("atomic") is False:
        message += " It is not atomic: the operations before the failing one stay applied."
    code = failure.get("sqlstate")
    tries = f" after {len(attempts)} attempt(s)" if len(attempts) > 1 else ""
    if code == _LOCK_NOT_AVAILABLE:
        last = attempts[-1].get("blockers") or []
        named = [b for b in blockers if b["pid"] in last] or blockers
        message += (
            f" It waited longer than lock_timeout={request.get('lock_timeout')} for a lock{tries}"
            + (f"; blocked by {_describe_blockers(named)}" if named else "")
            + ". End or shorten the blocking transactions, or raise lock_timeout or retries."
        )
    elif code == _QUERY_CANCELED:
        message += (
            f" A statement ran longer than statement_timeout={request.get('statement_timeout')} (not retried): "
            "raise statement_timeout, or make the migration cheaper."
        )
    return message


def _post_ids(request: dict) -> list[str]:
    return [str(m) for m in (request.get("post_migrations") or [])]


def _applied_state(executor) -> dict:
    """What is applied: ``applied_before`` (the ids recorded in django_migrations, sorted) and ``last_applied``
    (per app, its last applied migration in migrate's order: what ``migrate app_label name`` goes back to)."""
    recorded = executor.recorder.applied_migrations()
    last = {}
    for migration, _backwards in executor.migration_plan(executor.loader.graph.leaf_nodes(), clean_start=True):
        if (migration.app_label, migration.name) in executor.loader.applied_migrations:
            last[migration.app_label] = migration.name
    return {"applied_before": sorted(f"{a}.{n}" for a, n in recorded), "last_applied": last}


def _unapply_selection(executor, target: dict):
    """target_migration: the plan of ``migrate app_label name``, which must go backwards. Refused before any
    change when it would apply migrations, or when a migration in it cannot be unapplied."""
    plan, migration_target = _target_plan(executor, target)
    direction = _plan_direction(plan)
    shown = f"{migration_target['app_label']}.{migration_target['name'] or 'zero'}"
    if direction == "forwards":
        raise HelperError(
            "bad_target",
            f"target_migration {shown} is not applied: migrating to it would apply "
            f"{_names_list(f'{m.app_label}.{m.name}' for m, _b in plan)}. target_migration only unapplies; "
            "leave it out to apply migrations.",
            migration_target=migration_target,
        )
    irreversible = []
    for migration, _backwards in plan:
        ops = [f"operation {i} ({op.describe()})" for i, op in enumerate(migration.operations) if not op.reversible]
        if ops:
            irreversible.append(f"{migration.app_label}.{migration.name}: {', '.join(ops)}")
    if irreversible:
        raise HelperError(
            "irreversible",
            f"refusing to unapply down to {shown}: {'; '.join(irreversible)} cannot be unapplied (no reverse). "
            "Nothing was changed. Restore the snapshot taken before the deploy, or roll back the application only.",
            migration_target=migration_target,
            irreversible=irreversible,
        )
    return plan, migration_target


def _refuse_changed_plan(request: dict, digest: str, details: dict) -> None:
    expected = request.get("expected_plan_digest")
    if expected and str(expected).strip().lower() != digest:
        raise HelperError(
            "plan_changed",
            f"refusing to migrate: the pending plan's digest is {digest}, the approved one (expected_plan_digest) "
            f"is {expected}. The migrations changed since the plan was approved; re-run the plan, review it, and "
            "pass its new plan_digest.",
            expected_plan_digest=expected,
            **dict(details, plan_digest=digest),
        )


def action_migrate(request: dict) -> dict:
    from django.db import DatabaseError

    alias = request.get("database") or "default"
    connection = _connect(alias)
    lock_name = request.get("lock_name") or "safedeploy.migrate"
    key = lock_key(connection.settings_dict.get("NAME") or connection.connection.info.dbname, lock_name)
    lock_info = {"key": key, "name": lock_name, "waited": 0.0, "acquired": False}
    check_mode = bool(request.get("check_mode"))
    phase = request.get("phase") or "all"
    if phase not in ("all", *PHASES):
        raise HelperError("bad_phase", f"phase must be all, pre or post, not {phase!r}")
    post_ids = _post_ids(request)
    checks = list(request.get("checks") or [])

    lock_conn = connection.copy()
    try:
        lock_conn.ensure_connection()
        with lock_conn.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('application_name', %s, false)",
                [f"safedeploy.migrate {socket.gethostname()} pid {os.getpid()}"[:63]],
            )
    except DatabaseError as exc:
        raise _classify_db_error(exc, connection) from exc

    watcher = None
    try:
        if check_mode:
            target = _fingerprint(connection)
            _check_expected(target, request.get("expected") or {}, bool(request.get("allow_replica")))
            free = _try_lock(lock_conn, key)
            holders = []
            if free:
                _unlock(lock_conn, key)
            else:
                holders = _lock_holders(lock_conn, key)
            lock_info.update(free=free, holders=holders)
            executor = _executor(connection)
            _check_post_ids(executor.loader, post_ids)
            full_plan = _pending_plan(executor)
            selected, deferred, post_pending = _phase_selection(executor, full_plan, phase, post_ids)
            state = _applied_state(executor)
            if request.get("target"):
                selected, state["migration_target"] = _unapply_selection(executor, request["target"])
                deferred, post_pending = [], []
                state["would_unapply"] = [f"{m.app_label}.{m.name}" for m, _backwards in selected]
            digest = _plan_digest(selected)
            would_apply = [] if request.get("target") else [f"{m.app_label}.{m.name}" for m, _backwards in selected]
            _refuse_changed_plan(request, digest, {"target": target, "lock": lock_info, "phase": phase})
            return {
                **state,
                "ok": True,
                "check_mode": True,
                "changed": bool(would_apply or state.get("would_unapply")),
                "would_apply": would_apply,
                "pending_before": [f"{m.app_label}.{m.name}" for m, _backwards in full_plan],
                "phase": phase,
                "deferred": deferred,
                "post_pending": post_pending,
                "plan_digest": digest,
                "applied": [],
                "attempts": [],
                "retries_used": 0,
                "blockers": [],
                "failed": None,
                "verification": {
                    "ok": None,
                    "pending_after": None,
                    "invalid_indexes": [i["name"] for i in _invalid_indexes(connection)],
                    "checks": _skipped_checks(checks, "check mode"),
                },
                "target": target,
                "lock": lock_info,
            }

        wait = float(request.get("lock_wait", 300))
        started = time.monotonic()
        while not _try_lock(lock_conn, key):
            if time.monotonic() - started >= wait:
                holders = _lock_holders(lock_conn, key)
                lock_info["waited"] = round(time.monotonic() - started, 3)
                lock_info["holders"] = holders
                raise HelperError(
                    "lock_timeout",
                    f"another migration holds the lock '{lock_name}' (key {key}) after waiting {wait:g}s: "
                    f"{_describe_holders(holders)}. Wait for it to finish or raise lock_wait.",
                    lock=lock_info,
                )
            time.sleep(0.25)
        lock_info["waited"] = round(time.monotonic() - started, 3)
        lock_info["acquired"] = True

        # Under the lock: who are we talking to, and what is still pending now?
        target = _fingerprint(connection)
        _check_expected(target, request.get("expected") or {}, bool(request.get("allow_replica")))
        executor = _executor(connection)
        _check_post_ids(executor.loader, post_ids)
        full_plan = _pending_plan(executor)
        pending_before = [f"{m.app_label}.{m.name}" for m, _backwards in full_plan]
        selected, deferred, post_pending = _phase_selection(executor, full_plan, phase, post_ids)
        state = _applied_state(executor)
        if request.get("target"):
            selected, state["migration_target"] = _unapply_selection(executor, request["target"])
            deferred, post_pending = [], []
            state["unapplied"] = []
        digest = _plan_digest(selected)
        reply = {
            **state,
            "ok": True,
            "check_mode": False,
            "changed": False,
            "applied": [],
            "pending_before": pending_before,
            "phase": phase,
            "deferred": deferred,
            "post_pending": post_pending,
            "plan_digest": digest,
            "attempts": [],
            "retries_used": 0,
            "blockers": [],
            "failed": None,
            "verification": None,
            "target": target,
            "lock": lock_info,
        }
        _refuse_changed_plan(
            request, digest, {"target": target, "lock": lock_info, "phase": phase, "pending_before": pending_before}
        )
        failure = None
        if selected:
            _set_timeouts(connection, request)
            _set_session_guards(connection)
            watcher = _BlockerWatcher(connection)
            watcher.start()
            try:
                failure = _migrate_with_retries(connection, alias, selected, request, reply, watcher)
            finally:
                watcher.stop()
            reply["blockers"] = list(watcher.blockers.values())
            if watcher.error:
                reply["watch_error"] = watcher.error
            reply["retries_used"] = max(0, len(reply["attempts"]) - 1)
        dropped = [name for a in reply["attempts"] for name in a["invalid_indexes_dropped"]]
        reply["changed"] = bool(reply["applied"] or reply.get("unapplied") or dropped)
        reply["verification"] = _verify(
            connection, request, phase, post_ids, skip_checks="the migration failed" if failure else None
        )
        if failure is not None:
            applied_ids = {a["id"] for a in reply["applied"]}
            reply.update(
                ok=False,
                error_kind="migration_failed",
                failed={k: v for k, v in failure.items() if k != "exception"},
                not_attempted=[
                    f"{m.app_label}.{m.name}" for m, _backwards in selected
                    if f"{m.app_label}.{m.name}" not in applied_ids and f"{m.app_label}.{m.name}" != failure["id"]
                ],
                message=_failure_message(failure, reply["applied"], reply["attempts"], reply["blockers"], request)
                + (f" Unapplied before the failure: {', '.join(a['id'] for a in reply['unapplied']) or 'nothing'}."
                   if "unapplied" in reply else ""),
            )
            return reply
        label = f"target {reply['migration_target']['app_label']}.{reply['migration_target']['name'] or 'zero'}" if (
            request.get("target")) else f"phase {phase}"
        problems = _verification_problems(reply["verification"], label)
        if problems:
            reply.update(
                ok=False,
                error_kind="verification_failed",
                message="verification after migrating failed: " + "; ".join(problems) + ". Applied: "
                + (", ".join(a["id"] for a in reply["applied"]) or "nothing")
                + (f"; unapplied: {', '.join(a['id'] for a in reply['unapplied']) or 'nothing'}"
                   if "unapplied" in reply else "") + ".",
            )
        return reply
    finally:
        if watcher is not None:
            watcher.stop()
        try:
            if lock_info.get("acquired"):
                _unlock(lock_conn, key)
        except Exception:  # noqa: BLE001 - closing the session releases it anyway
            pass
        with contextlib.suppress(Exception):
            lock_conn.close()


def action_ping(request: dict) -> dict:
    """Only check the interpreter and Django: used by tests and preflight."""
    import django

    return {"ok": True, "python": sys.version.split()[0], "django": django.get_version()}


ACTIONS = {"plan": action_plan, "migrate": action_migrate, "ping": action_ping}


# ---------------------------------------------------------------------------
# Entry point


def scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, "********")
            escaped = json.dumps(secret)[1:-1]
            if escaped != secret:
                text = text.replace(escaped, "********")
    return text


def handle(request: dict) -> dict:
    action = request.get("action")
    if action not in ACTIONS:
        return {"ok": False, "error_kind": "bad_request", "message": f"unknown helper action {action!r}"}
    try:
        _setup_django(request)
        return ACTIONS[action](request)
    except HelperError as exc:
        return {"ok": False, "error_kind": exc.kind, "message": exc.message, **exc.details}
    except Exception as exc:  # noqa: BLE001 - always answer with JSON
        from_db = type(exc).__module__.startswith(("django.db", "psycopg"))
        return {
            "ok": False,
            "error_kind": "db_error" if from_db else "internal",
            "message": f"{type(exc).__name__}: {_first_line(str(exc))}",
            "traceback": traceback.format_exc()[-3000:],
        }


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the module that started us dies.

    The module starts the helper in a session of its own (so that a timeout can kill the whole
    group), which also shields it from the signals that stop Ansible (Ctrl-C, a cancelled CI job).
    Without this, an interrupted deploy would leave the helper migrating, unattended, with the lock.
    Dying closes both connections: the server releases the lock and rolls the migration back.
    """
    parent = os.environ.get("SAFEDEPLOY_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # the parent died before prctl took effect
        os._exit(143)


def main() -> int:
    _die_with_parent()
    real_stdout = os.fdopen(os.dup(1), "w", encoding="utf-8")
    # Anything Django (or the app) prints goes to stderr, not into our reply.
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        request = json.loads(sys.stdin.read() or "{}")
    except ValueError as exc:
        reply = {"ok": False, "error_kind": "bad_request", "message": f"request is not JSON: {exc}"}
    else:
        reply = handle(request)
    reply["protocol"] = PROTOCOL
    text = json.dumps(reply, default=str)
    real_stdout.write(scrub(text, _known_secrets()))
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
