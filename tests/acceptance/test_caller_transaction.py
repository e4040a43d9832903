"""start and send in the caller's transaction (``connection=``): with a
SQLAlchemy Connection, a SQLAlchemy Session and a psycopg 3 connection, the
workflow row (the message) commits or rolls back with the caller's business
write; a committed start runs on a real worker at once and finds the row
(Celery's DoesNotExist race cannot happen); a rolled-back one never runs; a
process killed between its commit and its publish loses nothing. (Django's
connections: tests/acceptance/test_django_example.py.)"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from dbos_celery import InvalidArgumentError, NonExistentWorkflowError
from tests.apps.intx import build
from tests.support import DATABASE_URL, Env, WorkerProcess, app_fixture, start_worker, wait_for

ns = app_fixture(build)
APP = "tests.apps.intx"

# each yields (connection for connection=, execute(sql, *params)) inside an
# open transaction, committed when the block ends, rolled back if it raises
Opener = Callable[[Env], Any]


@contextmanager
def _sqlalchemy_connection(env: Env) -> Iterator[tuple[Any, Callable[..., None]]]:
    engine = create_engine(env.database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            with conn.begin():
                yield conn, lambda sql, *p: conn.exec_driver_sql(sql, tuple(p))
    finally:
        engine.dispose()


@contextmanager
def _sqlalchemy_session(env: Env) -> Iterator[tuple[Any, Callable[..., None]]]:
    engine = create_engine(env.database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with Session(engine) as session:
            with session.begin():
                yield session, lambda sql, *p: session.connection().exec_driver_sql(sql, tuple(p))
    finally:
        engine.dispose()


@contextmanager
def _psycopg(env: Env) -> Iterator[tuple[Any, Callable[..., None]]]:
    with psycopg.connect(env.database_url) as conn:  # commits at the end, rolls back on error
        yield conn, lambda sql, *p: conn.execute(sql, p)


KINDS = {"sqlalchemy_connection": _sqlalchemy_connection,
         "sqlalchemy_session": _sqlalchemy_session, "psycopg": _psycopg}  # fmt: skip


@pytest.fixture(params=sorted(KINDS))
def opener(request: pytest.FixtureRequest, env: Env) -> Opener:
    env.sql("CREATE TABLE {schema}.widgets (id text PRIMARY KEY, name text)")
    return KINDS[request.param]


# the sends take the same path for every kind (the start tests cover each
# kind's commit hook): the SQLAlchemy ones run under -m slow
@pytest.fixture(
    params=["psycopg", *(pytest.param(k, marks=pytest.mark.slow) for k in sorted(KINDS)[1:])]
)
def send_opener(request: pytest.FixtureRequest, env: Env) -> Opener:
    env.sql("CREATE TABLE {schema}.widgets (id text PRIMARY KEY, name text)")
    return KINDS[request.param]


class Rollback(Exception):
    pass


def _insert_widget(env: Env, execute: Callable[..., None], wid: str) -> None:
    execute(f'INSERT INTO "{env.schema}".widgets VALUES (%s, %s)', wid, f"widget {wid}")


def test_a_start_commits_with_the_business_row_and_runs_at_once(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace, opener: Opener
) -> None:
    w = start_worker(env, workers, APP)
    with opener(env) as (conn, execute):
        _insert_widget(env, execute, "w1")
        handle = ns.ship.start("w1", workflow_id="ship-w1", connection=conn)
        # not committed: invisible to everyone else, so nothing runs yet (a
        # message published now would have the time to run and fail)
        time.sleep(0.5)
        assert env.sql("SELECT count(*) FROM {schema}.workflows") == [(0,)]
    assert handle.result(timeout=30) == "shipped widget w1", w.describe()
    assert env.ledger("ship-w1") == ["found"]  # it ran once, after the commit


def test_a_start_rolled_back_with_the_business_row_never_runs(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace, opener: Opener
) -> None:
    start_worker(env, workers, APP)
    with pytest.raises(Rollback), opener(env) as (conn, execute):
        _insert_widget(env, execute, "w2")
        ns.ship.start("w2", workflow_id="ship-w2", connection=conn)
        raise Rollback
    # a start after the rollback, committed, runs and is seen done: the one
    # rolled back had its chance to run in between and did not exist
    ns.ship.start("w3", workflow_id="ship-w3")
    env.sql("INSERT INTO {schema}.widgets VALUES ('w3', 'widget w3')")
    wait_for(lambda: env.ledger("ship-w3"), 30)
    ns.durable.sweep()
    assert env.sql("SELECT id FROM {schema}.workflows") == [("ship-w3",)]
    assert env.ledger("ship-w2") == []
    with pytest.raises(NonExistentWorkflowError):
        ns.durable.retrieve("ship-w2")


def test_a_send_is_delivered_when_its_transaction_commits_and_never_if_it_rolls_back(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace, send_opener: Opener
) -> None:
    opener = send_opener
    w = start_worker(env, workers, APP)
    handle = ns.inbox.start(workflow_id="inbox")
    wait_for(lambda: handle.status().status in ("PENDING", "WAITING"), 30, w.describe)
    with pytest.raises(Rollback), opener(env) as (conn, _):
        ns.durable.send("inbox", "rolled back", "in", connection=conn)
        raise Rollback
    with opener(env) as (conn, _):
        ns.durable.send("inbox", "committed", "in", connection=conn)
        assert env.sql("SELECT count(*) FROM {schema}.messages") == [(0,)]
    assert handle.result(timeout=30) == "committed", w.describe()
    assert env.sql("SELECT count(*) FROM {schema}.messages") == [(0,)]


def test_a_send_in_a_transaction_to_no_such_workflow_writes_nothing(
    env: Env, ns: SimpleNamespace, send_opener: Opener
) -> None:
    opener = send_opener
    with opener(env) as (conn, execute):
        _insert_widget(env, execute, "w4")
        with pytest.raises(NonExistentWorkflowError):
            ns.durable.send("nobody", 1, connection=conn)
        _insert_widget(env, execute, "w5")  # the caller's transaction goes on
    assert env.sql("SELECT count(*) FROM {schema}.widgets") == [(2,)]
    assert env.sql("SELECT count(*) FROM {schema}.messages") == [(0,)]


def _commit_then_die(vars_: dict[str, str]) -> None:
    """A producer killed (SIGKILL) at the moment it would publish, right
    after its transaction committed."""
    os.environ.update(vars_)
    producer = build(vars_)
    producer.durable.services.publish = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
    with psycopg.connect(vars_["DBOS_TEST_DATABASE_URL"]) as conn:
        conn.execute(f'INSERT INTO "{vars_["DBOS_TEST_SCHEMA"]}".widgets VALUES (%s, %s)',
                     ("w6", "widget w6"))  # fmt: skip
        producer.ship.start("w6", workflow_id="ship-w6", connection=conn)
    signal.pause()  # the after-commit thread publishes, and dies


def test_a_producer_killed_between_its_commit_and_its_publish_loses_nothing(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    env.sql("CREATE TABLE {schema}.widgets (id text PRIMARY KEY, name text)")
    proc = multiprocessing.get_context("spawn").Process(target=_commit_then_die, args=(env.vars(),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    assert env.sql("SELECT status FROM {schema}.workflows") == [("ENQUEUED",)]
    w = start_worker(env, workers, APP, extra_env={"DBOS_TEST_ENQUEUED_TIMEOUT": "0.3"})
    assert ns.durable.retrieve("ship-w6").result(timeout=30) == "shipped widget w6", w.describe()
    assert env.ledger("ship-w6") == ["found"]


def test_start_with_frees_the_names_that_start_reserves(env: Env, ns: SimpleNamespace) -> None:
    @ns.durable.workflow(name="intx.reserved")
    def reserved(workflow_id: str, timeout: float, connection: str) -> list[Any]:
        return [workflow_id, timeout, connection]

    handle = reserved.start_with(
        kwargs={"workflow_id": "mine", "timeout": 1.5, "connection": "theirs"}, workflow_id="r1"
    )
    row = env.sql("SELECT inputs FROM {schema}.workflows WHERE id = 'r1'")[0][0]
    assert ns.durable.services.codec.loads(bytes(row)) == {
        "args": [], "kwargs": {"workflow_id": "mine", "timeout": 1.5, "connection": "theirs"}
    }  # fmt: skip
    assert handle.workflow_id == "r1"
    with pytest.raises(InvalidArgumentError, match="args must be a tuple"):
        reserved.start_with("abc")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="kwargs must be a dict"):
        reserved.start_with((), [("a", 1)])  # type: ignore[arg-type]


def test_bad_connections_are_refused_before_anything_is_written(
    env: Env, ns: SimpleNamespace
) -> None:
    env.sql("CREATE TABLE {schema}.widgets (id text PRIMARY KEY, name text)")
    target = ns.inbox.start(workflow_id="target").workflow_id
    refused: list[tuple[Any, str]] = [(object(), "expected a SQLAlchemy Connection")]
    other = psycopg.connect(DATABASE_URL.rsplit("/", 1)[0] + "/postgres")
    refused.append((other, "another database"))
    failed = psycopg.connect(env.database_url)
    with pytest.raises(psycopg.errors.DivisionByZero):
        failed.execute("SELECT 1/0")
    refused.append((failed, "must be rolled back"))
    closed = psycopg.connect(env.database_url)
    closed.close()
    refused.append((closed, "closed"))
    try:
        for conn, why in refused:
            with pytest.raises(InvalidArgumentError, match=why):
                ns.ship.start("w", workflow_id="never", connection=conn)
            with pytest.raises(InvalidArgumentError, match=why):
                ns.durable.send(target, "never", connection=conn)
    finally:
        other.close()
        failed.close()
    assert env.sql("SELECT id FROM {schema}.workflows") == [("target",)]
    assert env.sql("SELECT count(*) FROM {schema}.messages") == [(0,)]


def test_connection_is_refused_inside_a_workflow(env: Env, ns: SimpleNamespace) -> None:
    durable, errors = ns.durable, []

    @durable.workflow(name="intx.inside")
    def inside() -> None:
        with psycopg.connect(env.database_url) as conn:
            for call in (lambda: ns.ship.start("x", connection=conn),
                         lambda: durable.send("x", 1, connection=conn)):  # fmt: skip
                try:
                    call()
                except InvalidArgumentError as exc:
                    errors.append(str(exc))

    inside()
    assert len(errors) == 2 and all("connection= is for producers" in e for e in errors)


def test_connection_is_refused_on_the_embedded_sqlite_file(tmp_path: Any) -> None:
    from celery import Celery

    from dbos_celery import Durable

    durable = Durable(Celery("lite"), f"sqlite:///{tmp_path}/lite.db")

    @durable.workflow(name="lite.wf")
    def wf() -> None:
        pass

    with psycopg.connect(DATABASE_URL) as conn:
        with pytest.raises(InvalidArgumentError, match="embedded SQLite"):
            wf.start(connection=conn)
    durable.close()
