"""A fleet restart with a backlog: workflows queued while no worker runs are
not taken for lost because they waited longer than enqueued_timeout; the
sweep re-publishes a row only when its queue has drained past it. A message
that is really gone (committed, never published) is still re-published once
its queue is seen empty."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from dbos_celery.store import workflows
from tests.apps.core import build
from tests.support import Env, WorkerProcess, app_fixture, start_worker

ns = app_fixture(build)

ENQUEUED_TIMEOUT = "2"


@pytest.mark.parametrize(
    "n", [pytest.param(1000, id="1000"), pytest.param(20_000, marks=pytest.mark.slow, id="20000")]
)
def test_cold_restart_with_a_backlog_gets_few_duplicates(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace, n: int
) -> None:
    env.extra["DBOS_TEST_ENQUEUED_TIMEOUT"] = ENQUEUED_TIMEOUT
    handles = [ns.echo.start(i, workflow_id=f"b-{i}") for i in range(n)]
    # and one row committed but never published (a crash between the two)
    inputs = ns.durable.services.codec.dumps({"args": ["lost"], "kwargs": {}})
    ns.durable.services.store.run(workflows.insert_workflow, "lost", "core.echo", inputs, None)
    time.sleep(float(ENQUEUED_TIMEOUT) + 1)  # all of them older than enqueued_timeout
    w = start_worker(env, workers, concurrency=2)
    for h in handles:
        h.result(timeout=60 + n / 100)
    # back well before the last resort (ten times enqueued_timeout)
    assert ns.durable.retrieve("lost").result(timeout=15) == {"args": ["lost"], "kwargs": {}}
    received = w.log_path.read_text().count("] received")
    duplicates = received - (n + 1)
    print(f"{n} queued before the worker started: {duplicates} duplicate deliveries")
    assert duplicates <= 0.02 * n, w.describe()
