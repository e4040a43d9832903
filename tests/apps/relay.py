"""A small in-process app for the bad-input and security tests: ``relay``
takes one message on a topic and publishes it as an event under the same
key, so one string can travel as workflow id, topic, idempotency key and
event key."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import redis
from celery import Celery

from dbos_celery import Durable
from tests.support import Env


def build(env: Env, **options: Any) -> SimpleNamespace:
    app = Celery("relay", broker=env.broker_url)
    app.conf.task_default_queue = env.queue
    durable = Durable(app, env.database_url, redis_url=env.redis_url, schema=env.schema, **options)

    @durable.step(name="relay.touch")
    def touch(value: str) -> str:
        return value

    @durable.workflow(name="relay.relay")
    def relay(topic: str) -> Any:
        message = durable.recv(topic, timeout=0)
        touch("touched")
        durable.set_event(topic, message)
        return message

    @durable.workflow(name="relay.echo")
    def echo(value: Any) -> Any:
        return value

    return SimpleNamespace(app=app, durable=durable, relay=relay, echo=echo, touch=touch)


def close(env: Env, ns: SimpleNamespace) -> None:
    """Close the Durable and drop the workflow messages published to the
    test's own broker queue (no worker consumes them: tests run workflows
    in-process with ``execute``)."""
    ns.durable.close()
    broker = redis.Redis.from_url(env.broker_url)
    try:
        broker.delete(env.queue)
    finally:
        broker.close()
