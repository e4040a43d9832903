"""Point an existing Durable, and its Celery app, at a test database.

Your ``durable = Durable(app, ...)`` is built once, when its module is
imported, with the URL of your real database; its workflows and steps are
bound to it by their decorators. Nothing connects before first use, so a
test can point that same object at a throwaway database and back:
:func:`bind` does it with ``Durable.using`` (its database and schema, its
wakeups, in-process by default, and any options you give) and applies a
Celery configuration to its app (the in-memory broker by default), then
undoes all of it when the block ends. Every workflow and step of that
Durable follows, wherever it was imported.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from kombu.transport import memory

from ..errors import ConfigurationError
from ..repoint import OPTIONS
from ..routing import queue_of

if TYPE_CHECKING:
    from celery import Celery

    from ..durable import Durable
    from .database import TestDatabase

# what a test's Celery app runs on unless the test says otherwise: the
# in-memory broker (polled every 50 ms: the default second makes every
# publish wait; drains short, so that a worker stops at once), no result
# backend to reach, and pytest keeps its log capture
TEST_CELERY_CONFIG: dict[str, Any] = {
    "broker_url": "memory://",
    "broker_transport": "dbos_celery.testing.transport:MemoryTransport",
    "broker_read_url": None,
    "broker_write_url": None,
    "broker_transport_options": {"polling_interval": 0.05},
    "broker_connection_retry_on_startup": True,
    "result_backend": "cache+memory://",
    "worker_hijack_root_logger": False,
}
"""The Celery settings a test's app runs on by default (``durable_celery_config``):
the in-memory broker polled every 50 ms, the ``cache+memory://`` result
backend, and pytest's log capture left alone. Extend it rather than replace
it: ``{**TEST_CELERY_CONFIG, "task_time_limit": 30}``."""

# Durable options a test may change: those of Durable.using() but the
# database ones (database_url, engine, schema), which the test database decides
_OPTIONS = OPTIONS | {"redis_url"}


@contextmanager
def bind(
    durable: Durable,
    database: TestDatabase,
    *,
    celery_config: Mapping[str, Any] | None = None,
    **options: Any,
) -> Iterator[Durable]:
    """Point ``durable`` (its workflows and steps) at ``database`` and its
    app at ``celery_config`` (default :data:`TEST_CELERY_CONFIG`) for the
    block; the tables are created on entry. ``options`` are Durable options
    for the block (``poll_interval=0.1``, ``park_after=None``,
    ``redis_url=...``; default: the Durable's own, and in-process wakeups).
    Afterwards the Durable and its app are as they were."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"bind() takes the options of Durable(...) but the database ones; got {unknown}"
        )
    config = copy.deepcopy(dict(TEST_CELERY_CONFIG if celery_config is None else celery_config))
    app_state: dict[str, Any] | None = None
    try:
        # checks the options (as Durable() does) before anything changes
        with durable.using(database.url, schema=database.schema, **options):
            app_state = {key: durable.app.conf.get(key) for key in config}
            _configure_app(durable.app, config)
            durable.migrate()
            yield durable
    finally:  # once the Durable has stopped its threads on the test's app
        if app_state is not None:
            _restore_app(durable.app, app_state)


def _configure_app(app: Celery, config: dict[str, Any]) -> None:
    """Apply ``config`` to the app's settings."""
    app.conf.update(config)
    _drop_connections(app)
    _purge_memory_queues(app)


def _restore_app(app: Celery, saved: dict[str, Any]) -> None:
    app.conf.update(saved)
    _drop_connections(app)


def app_queues(app: Celery) -> list[str]:
    """The queues Celery routes the app's own tasks (workflows included) to,
    and its default queue."""
    app.finalize(auto=True)
    found = {app.conf.task_default_queue}
    for name in list(app.tasks):
        if not name.startswith("celery."):
            queue = queue_of(app, name)
            if queue:
                found.add(queue)
    return sorted(found)


def _purge_memory_queues(app: Celery) -> None:
    """Empty the app's queues when its broker is this process's memory
    (what an earlier test left there); never a real broker's."""
    with app.connection_for_write() as conn:
        if not isinstance(conn.transport, memory.Transport):
            return
        channel = conn.default_channel
        for name in app_queues(app):
            channel.queue_purge(name)


def _drop_connections(app: Celery) -> None:
    """Forget the app's broker connections and producers, so that the next
    publish connects to the broker its settings name now."""
    app._pool = None  # (kombu's pools are shared by URL: dropped, not closed)
    amqp = app.__dict__.get("amqp")  # a cached_property: only if made already
    if amqp is not None:
        amqp._producer_pool = None
