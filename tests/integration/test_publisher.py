"""The wakeup publisher sends PUBLISH without waiting for its answer: every
hint still arrives, in order, past the bound on unread answers, and a Redis
restart costs at most the publishes that were in flight."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dbos_celery.wakeup import Publisher
from tests.pgcluster import PrivateRedis
from tests.support import wait_for


def _listener(url: str, channel: str) -> Any:
    pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    wait_for(lambda: pubsub.get_message(timeout=0.1) is None and pubsub.subscribed, 5)
    return pubsub


def _received(pubsub: Any, n: int) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        m = pubsub.get_message(timeout=0.2)
        if m is not None:
            got.append(m["data"].decode())
    return got


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    r = PrivateRedis().start()
    try:
        yield r
    finally:
        r.stop()


def test_every_publish_arrives_in_order_past_the_unread_bound(private_redis: PrivateRedis) -> None:
    channel = f"c-{uuid.uuid4().hex}"
    pubsub = _listener(private_redis.url, channel)
    publisher = Publisher(private_redis.url)
    n = 3 * Publisher.MAX_UNREAD + 5
    for i in range(n):
        publisher.publish(channel, str(i))
    assert _received(pubsub, n) == [str(i) for i in range(n)]
    publisher.close()
    pubsub.close()


def test_a_restarted_redis_gets_every_publish_after_it(private_redis: PrivateRedis) -> None:
    """The idle connection closed with the old server: found so before the
    next send, which goes on a new connection (no hint into a dead socket)."""
    channel = f"c-{uuid.uuid4().hex}"
    publisher = Publisher(private_redis.url)
    publisher.publish(channel, "before")
    private_redis.stop()
    private_redis.start()
    pubsub = _listener(private_redis.url, channel)
    for i in range(5):
        publisher.publish(channel, str(i))
    assert _received(pubsub, 5) == [str(i) for i in range(5)]
    publisher.close()
    pubsub.close()
