"""Schema migrations: safe to race, equal to the declared tables, and a
database newer than the code is refused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import create_engine, text

from dbos_celery import Durable, SchemaVersionError
from dbos_celery.store import migrations, tables
from tests.support import DATABASE_URL, Env, run_together

TABLES = {
    "schema_version",
    "workflows",
    "steps",
    "messages",
    "send_keys",
    "call_keys",
    "events",
    "workers",
    "worker_workflows",
}


@pytest.fixture
def fresh_schemas(env: Env) -> Iterator[list[str]]:
    """Names of schemas that do not exist yet; dropped after the test."""
    names = [f"m_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    try:
        yield names
    finally:
        for name in names:
            env.sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _durable(schema: str) -> Durable:
    return Durable(Celery("migrations"), DATABASE_URL, schema=schema)


def _migrate_on_barrier(schema: str, barrier: Any, out: Any) -> None:
    d = _durable(schema)
    try:
        barrier.wait(timeout=60)
        d.migrate()
        out.put("ok")
    except BaseException as exc:
        out.put(repr(exc))
    finally:
        d.close()


def test_concurrent_migrations_apply_each_version_once(env: Env, fresh_schemas: list[str]) -> None:
    """Eight processes migrate the same new schema at the same moment: none
    fails, and every version is recorded exactly once."""
    schema = fresh_schemas[0]
    n = 8
    results = run_together(n, _migrate_on_barrier, schema)
    assert results == ["ok"] * n

    assert env.sql("SELECT count(*) FROM pg_namespace WHERE nspname = %s", schema) == [(1,)]
    versions = env.sql(f'SELECT version FROM "{schema}".schema_version ORDER BY version')
    assert [v for (v,) in versions] == list(range(1, migrations.LATEST_VERSION + 1))
    tables = env.sql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", schema
    )
    assert {t for (t,) in tables} == TABLES


def _shape(env: Env, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Columns, constraints and indexes of a schema, with its name left out."""
    columns = env.sql(
        "SELECT table_name, column_name, ordinal_position, data_type, is_nullable, "
        "column_default, is_identity, identity_generation "
        "FROM information_schema.columns WHERE table_schema = %s "
        "ORDER BY table_name, ordinal_position",
        schema,
    )
    constraints = env.sql(
        "SELECT tc.table_name, tc.constraint_name, tc.constraint_type, "
        "string_agg(kcu.column_name, ',' ORDER BY kcu.ordinal_position) "
        "FROM information_schema.table_constraints tc "
        "LEFT JOIN information_schema.key_column_usage kcu "
        "ON kcu.constraint_schema = tc.constraint_schema "
        "AND kcu.constraint_name = tc.constraint_name "
        "WHERE tc.table_schema = %s AND tc.constraint_type <> 'CHECK' "
        "GROUP BY 1, 2, 3 ORDER BY 1, 2",
        schema,
    )
    indexes = env.sql(
        "SELECT tablename, indexname, replace(indexdef, %s, 'S') FROM pg_indexes "
        "WHERE schemaname = %s ORDER BY tablename, indexname",
        f"{schema}.",
        schema,
    )
    return {"columns": columns, "constraints": constraints, "indexes": indexes}


def test_migrated_schema_equals_declared_tables(env: Env, fresh_schemas: list[str]) -> None:
    """Upgrading through every migration gives exactly the schema that
    ``metadata.create_all`` makes from the table declarations."""
    migrated, declared = fresh_schemas
    d = _durable(migrated)
    try:
        d.migrate()
    finally:
        d.close()
    engine = create_engine(DATABASE_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{declared}"'))
            tables.metadata.create_all(
                conn.execution_options(schema_translate_map={None: declared})
            )
    finally:
        engine.dispose()

    got, want = _shape(env, migrated), _shape(env, declared)
    assert {row[0] for row in want["columns"]} == TABLES
    assert want["indexes"], "no indexes found: the comparison would prove nothing"
    assert got == want


def test_schema_newer_than_code_is_refused(env: Env, fresh_schemas: list[str]) -> None:
    schema = fresh_schemas[0]
    d = _durable(schema)
    try:
        d.migrate()
    finally:
        d.close()
    env.sql(
        f'INSERT INTO "{schema}".schema_version (version) VALUES (%s)',
        migrations.LATEST_VERSION + 1,
    )

    newer = _durable(schema)
    try:
        with pytest.raises(SchemaVersionError):
            newer.migrate()
        with pytest.raises(SchemaVersionError):  # also on first use, without migrate()
            newer.list_workflows()
    finally:
        newer.close()
    versions = env.sql(f'SELECT version FROM "{schema}".schema_version ORDER BY version')
    assert [v for (v,) in versions] == [
        *range(1, migrations.LATEST_VERSION + 1),
        migrations.LATEST_VERSION + 1,
    ]
