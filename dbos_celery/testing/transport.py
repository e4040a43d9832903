"""The in-memory broker for tests, with short drains.

Celery's in-process test worker on a transport without an event loop (the
in-memory one) reads messages in a loop of ``drain_events(timeout=2.0)``
calls and looks for a shutdown only between them, and once more after it
saw one: stopping it takes up to 4 s. This transport is kombu's memory
transport (the same queues: it shares their state) whose timed drains
last at most :data:`DRAIN` seconds, so a test's worker stops within a
fraction of a second. Celery setting: ``broker_transport =
"dbos_celery.testing.transport:MemoryTransport"``.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import memory

DRAIN = 0.1  # seconds: the longest timed wait for a message


class MemoryTransport(memory.Transport):
    """kombu's in-memory transport; a timed drain returns within DRAIN s."""

    def drain_events(self, connection: Any, timeout: Any = None, **kwargs: Any) -> Any:
        if timeout is not None:
            timeout = min(timeout, DRAIN)
        drain = super().drain_events
        return drain(connection, timeout=timeout, **kwargs)  # type: ignore[no-untyped-call]
