"""Database outages: Postgres stopped, restarted, its sessions terminated.

The library's tables live in a private Postgres cluster of this module
(tests/pgcluster.py) that the tests stop and restart; the shared server
holds only the ledger of side effects and the gates (tests/apps/outage.py),
so a step can record itself and wait while the library's database is down.
Workflows run on real `celery worker` subprocesses.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace

import psycopg
import pytest

from dbos_celery import DatabaseUnavailableError, NonExistentWorkflowError
from tests.apps.outage import build
from tests.pgcluster import PgCluster, app_on_cluster, private_cluster
from tests.support import Env, WorkerProcess, open_gate, start_worker, wait_for

RETRY = 2.0  # database_retry_timeout of the test process and the workers
THREE = ["step1", "step2", "step3"]


@pytest.fixture(scope="module")
def pg(services: None) -> Iterator[PgCluster]:
    yield from private_cluster()


@pytest.fixture
def ns(env: Env, pg: PgCluster) -> Iterator[SimpleNamespace]:
    """The test's app + Durable: tables in the private cluster, ledger and
    gates in the shared server (``env``); workers get the same variables."""
    yield from app_on_cluster(pg, env, build, DBOS_TEST_LEDGER_URL=env.database_url,
                              DBOS_TEST_DB_RETRY_TIMEOUT=str(RETRY))  # fmt: skip


def _lib_sql(pg: PgCluster, env: Env, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        cur = conn.execute(query.replace("{schema}", f'"{env.schema}"'), params)
        return cur.fetchall() if cur.description else []


def _effects(env: Env, workflow_id: str) -> Counter[str]:
    return Counter(w for w in env.ledger(workflow_id) if not w.startswith("open:"))


def _timed_unavailable(call: object) -> float:
    t0 = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as info:
        call()  # type: ignore[operator]
    assert type(info.value) is DatabaseUnavailableError  # not a raw driver error
    return time.monotonic() - t0


def test_send_and_start_raise_database_unavailable_after_bounded_retry(
    env: Env, pg: PgCluster, ns: SimpleNamespace
) -> None:
    """With Postgres stopped, send() and start() retry for
    database_retry_timeout, then raise DatabaseUnavailableError (no hang, no
    psycopg error); they wrote nothing, and work again once it is back."""
    ns.three.start(gate_step=0, workflow_id="dest")  # no worker: stays ENQUEUED
    pg.stop()
    send = lambda: ns.durable.send("dest", "hi", topic="t", idempotency_key="k1")  # noqa: E731
    start = lambda: ns.three.start(workflow_id="during")  # noqa: E731
    for call in (send, start):
        elapsed = _timed_unavailable(call)
        assert RETRY <= elapsed < RETRY + 10  # it retried, and it gave up
    pg.start()
    with pytest.raises(NonExistentWorkflowError):
        ns.durable.retrieve("during")  # the failed start wrote nothing
    assert _lib_sql(pg, env, "SELECT count(*) FROM {schema}.messages")[0][0] == 0
    for _ in range(2):  # the producer retries its failed send: stored once
        ns.durable.send("dest", "hi", topic="t", idempotency_key="k1")
    assert _lib_sql(pg, env, "SELECT count(*) FROM {schema}.messages")[0][0] == 1


@pytest.mark.parametrize("outage", ["restart", "down_twice_the_retry_timeout"])
def test_workflow_mid_step_completes_after_postgres_comes_back(
    env: Env, pg: PgCluster, ns: SimpleNamespace, workers: list[WorkerProcess], outage: str
) -> None:
    """A workflow blocked in step 2 on a worker while Postgres restarts (or
    stays down for twice database_retry_timeout, so the worker's checkpoint
    write gives up) completes with the right result; the worker keeps
    running; step 1, committed before the outage, never runs again."""
    w = start_worker(env, workers, "tests.apps.outage", name=outage[:7])
    handle = ns.three.start(gate_step=2, workflow_id="mid-1")
    wait_for(lambda: "step2" in env.ledger("mid-1"), 30, w.describe)
    if outage == "restart":
        pg.restart()
        open_gate(env.schema, "mid-1", "step2")
    else:
        pg.stop()
        open_gate(env.schema, "mid-1", "step2")  # step 2 returns; its checkpoint cannot commit
        time.sleep(2 * RETRY)
        pg.start()

    assert handle.result(timeout=90) == THREE, w.describe()
    counts = _effects(env, "mid-1")
    # step 2 may run again (its checkpoint had not committed: at-least-once)
    assert counts["step1"] == 1 and counts["step3"] == 1, (counts, w.describe())
    assert 1 <= counts["step2"] <= 2, (counts, w.describe())
    assert handle.status().status == "SUCCESS"
    assert w.proc.poll() is None, w.describe()  # the worker rode the outage out
    # and it still runs new workflows
    assert ns.three.start(workflow_id="after-1").result(timeout=60) == THREE, w.describe()


def test_terminated_database_sessions_are_survived_mid_workflow(
    env: Env, pg: PgCluster, ns: SimpleNamespace, workers: list[WorkerProcess]
) -> None:
    """pg_terminate_backend of every session of the private cluster (the
    worker's pools, heartbeats, sweeper) while a step runs, and again while
    the next step runs: the workflow completes, each step ran once."""
    w = start_worker(env, workers, "tests.apps.outage", name="term")
    handle = ns.three.start(gate_step=2, workflow_id="term-1")
    wait_for(lambda: "step2" in env.ledger("term-1"), 30, w.describe)
    assert pg.terminate_backends() > 0
    open_gate(env.schema, "term-1", "step2")
    assert handle.result(timeout=60) == THREE, w.describe()
    second = ns.three.start(gate_step=3, workflow_id="term-2")
    wait_for(lambda: "step3" in env.ledger("term-2"), 30, w.describe)
    assert pg.terminate_backends() > 0
    open_gate(env.schema, "term-2", "step3")
    assert second.result(timeout=60) == THREE, w.describe()
    for wid in ("term-1", "term-2"):
        assert _effects(env, wid) == dict.fromkeys(THREE, 1), w.describe()
    assert w.proc.poll() is None, w.describe()
