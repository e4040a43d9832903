"""The wake of a parked workflow (WAITING -> ENQUEUED, by the send of what it
waits for) commits asynchronously (``store/parking.py``). A Postgres crash
can lose it: the row is then still parked, with its message stored, and the
sweep wakes it. The library's tables are in a private cluster that the test
crashes (immediate shutdown) with its WAL writer slowed down, so that the
asynchronous commit is still in memory; real `celery worker` processes."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import psycopg
import pytest

from tests.apps.park import build
from tests.pgcluster import PgCluster, app_on_cluster, private_cluster
from tests.support import Env, WorkerProcess, start_worker, wait_for

APP = "tests.apps.park"
PARK_NOW = {"DBOS_TEST_PARK_AFTER": "0"}


@pytest.fixture
def pg(services: None) -> Iterator[PgCluster]:
    yield from private_cluster()


@pytest.fixture
def ns(env: Env, pg: PgCluster) -> Iterator[SimpleNamespace]:
    yield from app_on_cluster(pg, env, build)


def _sql(pg: PgCluster, env: Env, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        cur = conn.execute(query.replace("{schema}", f'"{env.schema}"'))
        return cur.fetchall() if cur.description else []


def _status(pg: PgCluster, env: Env) -> object:
    return _sql(pg, env, "SELECT status FROM {schema}.workflows WHERE id = 'w'")[0][0]


def test_a_wake_lost_in_a_postgres_crash_is_made_good_by_the_sweep(
    env: Env, pg: PgCluster, ns: SimpleNamespace, workers: list[WorkerProcess]
) -> None:
    _sql(pg, env, "ALTER SYSTEM SET wal_writer_delay = '10s'")
    _sql(pg, env, "SELECT pg_reload_conf()")
    first = start_worker(env, workers, APP, name="first", extra_env=PARK_NOW)
    handle = ns.quiet.start("t", 600.0, workflow_id="w")
    wait_for(lambda: _status(pg, env) == "WAITING", 30, first.describe)
    first.stop()  # no worker consumes the queue now

    # the message commits (synchronously), the wake (asynchronously), then
    # the workflow's Celery message is published; Postgres crashes at once
    ns.durable.send("w", "hello", "t")
    pg.crash()
    pg.start()
    assert _status(pg, env) == "WAITING"  # the wake was lost ...
    assert _sql(pg, env, "SELECT count(*) FROM {schema}.messages") == [(1,)]  # ... not the message

    second = start_worker(env, workers, APP, name="second", extra_env=PARK_NOW)
    assert handle.result(timeout=30) == "hello", second.describe()
    assert _sql(pg, env, "SELECT count(*) FROM {schema}.messages") == [(0,)]
