"""The library does not depend on the Redis broker: the same crash recovery
with RabbitMQ as the Celery broker (Redis only carries wakeup hints)."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from kombu import Connection

from tests.apps.core import build
from tests.support import Env, WorkerProcess, wait_for

AMQP_URL = os.environ.get("DBOS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture
def amqp_env(env: Env) -> Env:
    try:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.connect()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"RabbitMQ is not answering: {exc}")
    env.broker_url = AMQP_URL
    return env


def test_workflow_recovers_after_kill_with_rabbitmq_broker(
    amqp_env: Env, workers: list[WorkerProcess]
) -> None:
    env = amqp_env
    ns = build(env.vars())
    first = WorkerProcess(env, name="amqp-first")
    workers.append(first)
    first.wait_ready()
    handle = ns.five_steps.start(3, 2.0, workflow_id="amqp-1")
    wait_for(lambda: "step3" in env.ledger("amqp-1"), 20, first.describe)
    first.kill()

    second = WorkerProcess(env, name="amqp-second")
    workers.append(second)
    second.wait_ready()
    assert handle.result(timeout=30) == ["step1", "step2", "step3", "step4", "step5"]
    counts = Counter(env.ledger("amqp-1"))
    assert counts["step1"] == counts["step2"] == counts["step5"] == 1
    assert counts["step3"] == 2  # interrupted before its checkpoint: ran again
