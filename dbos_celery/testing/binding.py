"""Point an existing Durable, and its Celery app, at a test database.

Your ``durable = Durable(app, ...)`` is built once, when its module is
imported, with the URL of your real database; its workflows and steps are
bound to it by their decorators. Nothing connects before first use, so a
test can point that same object at a throwaway database and back:
:func:`bind` closes what it opened, swaps its database (URL and schema),
its wakeups (in-process by default) and any options you give, and applies a
Celery configuration to its app (the in-memory broker by default), then
undoes all of it when the block ends. Every workflow and step of that
Durable follows, wherever it was imported.

This is the one module of the package that reaches into a Durable's
insides (its services, its Celery hooks); see ``_Repointed``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from kombu.transport import memory

from ..config import Settings
from ..errors import ConfigurationError
from ..keys import channel_prefix
from ..recovery.liveness import Liveness
from ..routing import queue_of
from ..slots import SlotDemand
from ..store.engine import Database
from ..wakeup import LocalNotifier, Notifier, RedisNotifier

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

# Durable options a test may change (the Settings fields but the schema,
# which the test database decides), and the Redis URL of the wakeups
_SETTINGS = {f.name for f in dataclasses.fields(Settings)} - {"schema"}
_OTHER_OPTIONS = {"redis_url"}


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
    unknown = sorted(set(options) - _SETTINGS - _OTHER_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"bind() takes the options of Durable(...) but the database ones; got {unknown}"
        )
    config = copy.deepcopy(dict(TEST_CELERY_CONFIG if celery_config is None else celery_config))
    repointed = _Repointed(durable, database, options)
    app_state = _configure_app(durable.app, config)
    try:
        repointed.apply()
        try:
            durable.migrate()
            yield durable
        finally:
            repointed.undo()
    finally:
        _restore_app(durable.app, app_state)


class _Repointed:
    """The swap of one Durable's database, settings and wakeups.

    Every piece is built as ``Durable(...)`` builds it, from the Durable's
    own settings plus the test's, and checked the same way, before anything
    changes. The database and the settings are updated *in place*: every
    object that holds them (the services, the beater's liveness, a
    transaction source, ...) sees the test's. The per-worker state (the
    beater and its lease board, the slot counter) is made afresh.
    """

    def __init__(self, durable: Durable, database: TestDatabase, options: dict[str, Any]) -> None:
        sv = durable.services
        self.durable = durable
        fields = {f.name: getattr(sv.settings, f.name) for f in dataclasses.fields(Settings)}
        fields.update({k: v for k, v in options.items() if k in _SETTINGS})
        if isinstance(fields.get("retention"), timedelta):
            fields["retention"] = fields["retention"].total_seconds()
        fields["schema"] = database.schema
        self.settings = Settings(**fields)  # checks the options, as Durable() does
        self.store = Database(database.url, schema=database.schema,
                              retry_timeout=self.settings.database_retry_timeout)  # fmt: skip
        redis = options.get("redis_url")
        self.notifier: Notifier = (
            RedisNotifier(redis, channel_prefix(database.schema)) if redis else LocalNotifier()
        )
        self._saved: tuple[dict[str, Any], dict[str, Any], Notifier] | None = None

    def apply(self) -> None:
        sv = self.durable.services
        reset_worker_state(self.durable)  # closes what it had opened on its own database
        self._saved = (
            _swap_state(sv.store, self.store), _swap_state(sv.settings, self.settings),
            sv.notifier,
        )  # fmt: skip
        sv.notifier = self.notifier

    def undo(self) -> None:
        if self._saved is None:
            return
        sv = self.durable.services
        reset_worker_state(self.durable)  # closes what the test opened
        store_state, settings_state, sv.notifier = self._saved
        _set_state(sv.store, store_state)
        _set_state(sv.settings, settings_state)
        self._saved = None


def reset_worker_state(durable: Durable) -> None:
    """Close what ``durable`` opened in this process (threads, connections),
    stop the beater of its in-process worker, and give the next worker a
    fresh beater and slot counter: after that worker stopped, or before
    another database is used. (A worker process's beater exits with the
    process, and its counter stays "shutting down"; a test's process goes
    on and may start another worker.)"""
    sv = durable.services
    durable.close()  # its threads, and the runtime that used the board
    proc = getattr(sv.liveness, "_proc", None)
    if proc is not None and proc.poll() is None:
        proc.kill()  # it ignores SIGTERM (a warm shutdown keeps the leases)
        proc.wait(timeout=10)
    board = sv.liveness.board
    if board is not None:  # its memory stays mapped for whoever still reads it
        os.close(board.fd)
    sv.liveness = Liveness(sv.store, sv.settings)
    sv.slots = SlotDemand()
    hooks = durable._hooks
    hooks.demand.stop()  # (stopped already when the worker stopped warm)
    hooks.keeper.stop()
    hooks.__post_init__()  # its periodic loops, on the new slot counter and beater
    durable._calls.redispatch_after = float(sv.settings.call_redispatch_after)


def _swap_state(target: object, source: object) -> dict[str, Any]:
    """Give ``target`` the attributes of ``source``; its old ones."""
    old = dict(vars(target))
    _set_state(target, dict(vars(source)))
    return old


def _set_state(target: object, state: dict[str, Any]) -> None:
    vars(target).clear()
    vars(target).update(state)  # (also for a frozen dataclass: no __setattr__)


def _configure_app(app: Celery, config: dict[str, Any]) -> dict[str, Any]:
    """Apply ``config`` to the app's settings; the values it replaced."""
    saved = {key: app.conf.get(key) for key in config}
    app.conf.update(config)
    _drop_connections(app)
    _purge_memory_queues(app)
    return saved


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
