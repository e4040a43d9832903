"""The library does not depend on the Redis broker: the same crash recovery
with RabbitMQ as the Celery broker (Redis only carries wakeup hints)."""

from __future__ import annotations

from collections import Counter

from tests.apps.core import build
from tests.support import Env, WorkerProcess, wait_for


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
