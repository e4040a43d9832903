"""Workflow messages prefetched by a worker that dies are recovered at once,
without waiting for the broker's visibility timeout (1 h on Redis)."""

from __future__ import annotations

from tests.apps.core import build
from tests.pgcluster import PrivateRedis
from tests.support import Env, WorkerProcess, start_worker, wait_for


def test_prefetched_workflows_of_a_killed_worker_are_recovered(
    env: Env, workers: list[WorkerProcess]
) -> None:
    # enqueued_timeout of an hour: the only way back is the reserved_by record
    env.extra["DBOS_TEST_ENQUEUED_TIMEOUT"] = "3600"
    ns = build(env.vars())
    first = start_worker(env, workers, concurrency=1, name="first")
    held = ns.five_steps.start(1, 3.0, workflow_id="held")
    wait_for(lambda: env.ledger("held"), 20, first.describe)
    queued = [ns.five_steps.start(workflow_id=f"queued-{i}") for i in range(3)]
    # the worker's main process has received (prefetched) them and recorded it
    wait_for(
        lambda: (
            env.sql("SELECT count(*) FROM {schema}.workflows WHERE reserved_by IS NOT NULL")[0][0]
            == 3
        ),
        20,
        first.describe,
    )
    first.kill()
    assert all(h.status().status == "ENQUEUED" for h in queued)

    second = WorkerProcess(env, concurrency=1, name="second")
    workers.append(second)
    second.wait_ready()
    for h in [held, *queued]:
        assert h.result(timeout=30) == ["step1", "step2", "step3", "step4", "step5"]
    for h in queued:
        assert env.ledger(h.workflow_id) == ["step1", "step2", "step3", "step4", "step5"]


def test_prefetched_workflows_dropped_by_a_live_worker_are_published_again(
    env: Env, workers: list[WorkerProcess]
) -> None:
    """A live worker whose broker connection is reset drops the messages it
    had prefetched (Celery clears its reserved requests). The worker keeps
    heartbeating, so its reservations must not keep the sweep from
    re-publishing them."""
    broker = PrivateRedis()
    broker.start()
    try:
        env.broker_url = broker.url.replace("/0", "/1")
        env.extra["DBOS_TEST_ENQUEUED_TIMEOUT"] = "1"
        ns = build(env.vars())
        w = start_worker(env, workers, concurrency=1, name="w")
        held = ns.five_steps.start(1, 1.0, workflow_id="held")
        wait_for(lambda: env.ledger("held"), 20, w.describe)
        queued = [ns.five_steps.start(workflow_id=f"queued-{i}") for i in range(3)]
        wait_for(lambda: _reserved(env) == 3, 20, w.describe)
        # Redis loses its data and every connection, as a restart without
        # persistence does (a real restart also kills this kombu's consumer
        # outright, a worker death the other test covers): the worker's
        # consumer reconnects and drops what it had prefetched, and the
        # messages are gone from Redis. The worker stays alive and
        # heartbeating all along.
        broker.client.flushall()
        broker.client.client_kill_filter(_type="normal", skipme=True)
        for h in [held, *queued]:
            assert h.result(timeout=60) == ["step1", "step2", "step3", "step4", "step5"]
        assert w.proc.poll() is None  # the same worker ran them all
        for h in queued:
            assert env.ledger(h.workflow_id) == ["step1", "step2", "step3", "step4", "step5"]
    finally:
        broker.stop()


def _reserved(env: Env) -> int:
    rows = env.sql("SELECT count(*) FROM {schema}.workflows WHERE reserved_by IS NOT NULL")
    return int(rows[0][0])
