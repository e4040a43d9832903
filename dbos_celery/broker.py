"""How many messages a broker queue holds: what tells the recovery sweep
that an enqueued workflow's message is really gone (``recovery/sweep.py``).

Asked with a passive ``queue_declare`` (Redis and AMQP both answer with a
message count; a queue the broker does not know holds none), on a
connection of its own kept between asks and made anew after an error.
Messages a worker has received but not acknowledged are not counted: they
are no longer in the queue.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from kombu.exceptions import ChannelError

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("dbos_celery")


class QueueDepths:
    """``depths(queue)``: the messages in ``queue`` (None: Celery's default
    queue), or None when the broker cannot be asked now."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._conn: Any = None
        self._channel: Any = None
        self._lock = threading.Lock()

    def __call__(self, queue: str | None) -> int | None:
        name = queue or self.app.conf.task_default_queue
        with self._lock:
            try:
                if self._channel is None:
                    self._conn = self.app.connection_for_read()
                    self._channel = self._conn.channel()
                return int(self._channel.queue_declare(queue=name, passive=True).message_count)
            except ChannelError:  # no such queue: nothing in it
                self._reset()
                return 0
            except Exception as exc:
                log.debug("could not ask the broker about queue %r (%s)", name, exc)
                self._reset()
                return None

    def _reset(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception:
                pass

    def close(self) -> None:
        with self._lock:
            self._reset()
