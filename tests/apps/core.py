"""The app that core tests run in real `celery worker` processes.

``build()`` makes a fresh app + Durable bound to one test's schema and queue;
the worker subprocess builds it from the environment (module-level ``app``).
Steps record their side effects in the test's ledger table.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

from celery import Celery

from dbos_celery import Durable
from tests.support import BROKER_URL, DATABASE_URL, REDIS_URL, write_ledger


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    e = dict(os.environ if env is None else env)
    schema = e.get("DBOS_TEST_SCHEMA", "dbos_celery_dev")
    queue = e.get("DBOS_TEST_QUEUE", "celery")
    app = Celery("core", broker=e.get("DBOS_TEST_BROKER_URL", BROKER_URL))
    app.conf.task_default_queue = queue
    app.conf.broker_connection_retry_on_startup = True
    app.conf.worker_hijack_root_logger = False
    durable = Durable(
        app,
        e.get("DBOS_TEST_DATABASE_URL", DATABASE_URL),
        redis_url=e.get("DBOS_TEST_REDIS_URL", REDIS_URL) or None,
        schema=schema,
        **durable_options,
    )
    ns = SimpleNamespace(app=app, durable=durable, schema=schema)

    def ledger_for(workflow_id: str, what: str) -> None:
        write_ledger(schema, workflow_id, what)

    @durable.step(name="core.side_effect")
    def side_effect(workflow_id: str, what: str, hold: float = 0.0) -> str:
        ledger_for(workflow_id, what)
        if hold:
            time.sleep(hold)
        return what

    @durable.workflow(name="core.five_steps")
    def five_steps(hold_step: int = 0, hold: float = 0.0) -> list[str]:
        wid = durable.workflow_id
        out = []
        for i in range(1, 6):
            out.append(side_effect(wid, f"step{i}", hold if i == hold_step else 0.0))
        return out

    attempts: dict[str, int] = {}

    @durable.step(name="core.flaky", max_attempts=4, interval=0.05, backoff=2.0)
    def flaky(workflow_id: str, failures: int) -> int:
        n = attempts.get(workflow_id, 0) + 1
        attempts[workflow_id] = n
        ledger_for(workflow_id, f"attempt{n}@{time.time():.3f}")
        if n <= failures:
            raise ConnectionError(f"attempt {n} failed")
        return n

    @durable.workflow(name="core.retrying")
    def retrying(failures: int) -> int:
        return flaky(durable.workflow_id, failures)

    @durable.step(name="core.boom")
    def boom(workflow_id: str) -> None:
        ledger_for(workflow_id, "boom")
        raise KeyError("no such order")

    @durable.workflow(name="core.failing_step_then_wait")
    def failing_step_then_wait(hold: float) -> str:
        try:
            boom(durable.workflow_id)
        except KeyError as exc:
            caught = f"caught {exc!r}"
        side_effect(durable.workflow_id, "after", hold)
        return caught

    @durable.workflow(name="core.echo")
    def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": list(args), "kwargs": kwargs}

    ns.__dict__.update(
        side_effect=side_effect,
        five_steps=five_steps,
        retrying=retrying,
        failing_step_then_wait=failing_step_then_wait,
        echo=echo,
    )
    return ns


# the worker subprocess: `celery -A tests.apps.core worker`
if os.environ.get("DBOS_TEST_SCHEMA"):
    _ns = build()
    app = _ns.app
    durable = _ns.durable
