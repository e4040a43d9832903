"""The queue a workflow runs on is recorded when it starts, and every later
publish of it goes there, whichever process publishes: a producer that
lacks the app's ``task_routes`` wakes a parked workflow on its own queue."""

from __future__ import annotations

from celery import Celery

from dbos_celery import Durable
from tests.apps.park import build
from tests.support import Env, WorkerProcess, start_worker, wait_for

APP = "tests.apps.park"


def test_wake_by_a_producer_without_routes_goes_to_the_recorded_queue(
    env: Env, workers: list[WorkerProcess]
) -> None:
    special = f"{env.queue}_special"
    routes = {"DBOS_TEST_ROUTE_QUEUE": special, "DBOS_TEST_PARK_AFTER": "0"}
    # the worker consumes only the workflows' own queue
    w = start_worker(env, workers, APP, name="w", queues=special, extra_env=routes)
    routed = build({**env.vars(), **routes})
    # a producer with the same database and broker but no task_routes: its
    # default queue is the test's, which no worker consumes here
    plain_app = Celery("producer", broker=env.broker_url)
    plain_app.conf.task_default_queue = env.queue
    plain = Durable(plain_app, env.database_url, redis_url=env.redis_url, schema=env.schema)
    try:
        handle = routed.waits.start("go", 600.0, workflow_id="r-1")
        row = "SELECT status, queue FROM {schema}.workflows WHERE id = 'r-1'"
        wait_for(lambda: env.sql(row) == [("WAITING", special)], 20, w.describe)
        plain.send("r-1", "hello", "go")  # wakes it: publishes it again
        # at once, not after the sweep's enqueued_timeout (30 s)
        assert handle.result(timeout=10) == "hello", w.describe()
    finally:
        plain.close()
        routed.durable.close()
