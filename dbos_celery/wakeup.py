"""Wakeups: in-process waiters, and the notifiers that wake them.

Pub/sub is a hint; Postgres is the truth. A waiter registers its key, reads
Postgres, and only then waits, with a bound, before reading again: a message
that commits in between is either seen by the read or wakes the wait, and a
lost hint costs at most one poll interval.

One Redis subscriber thread per process listens on a single channel and fans
hints out to the waiters of that process (saq's multiplexer does the same).
After a reconnect it wakes every waiter, since hints may have been missed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import redis

from .loops import LogOnce, backoff


class Waiter:
    __slots__ = ("_event", "_on_wake")

    def __init__(self, on_wake: Callable[[], None] | None = None) -> None:
        self._event = threading.Event()
        self._on_wake = on_wake

    def wait(self, timeout: float) -> bool:
        """Block until woken or ``timeout``; re-arm for the next wait."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    def wake(self) -> None:
        self._event.set()
        if self._on_wake is not None:
            self._on_wake()


class Waiters:
    """The waiters of one process, keyed by what they wait for.

    ``on_first(key)`` and ``on_last(key)`` run (under the lock, so they are
    ordered) when a key gets its first waiter and loses its last one.
    """

    def __init__(
        self,
        on_first: Callable[[str], None] | None = None,
        on_last: Callable[[str], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, set[Waiter]] = {}
        self._on_first = on_first
        self._on_last = on_last

    @contextmanager
    def register(self, k: str, on_wake: Callable[[], None] | None = None) -> Iterator[Waiter]:
        """A waiter for ``k``; ``on_wake`` also runs (in the waking thread)
        each time it is woken."""
        w = Waiter(on_wake)
        with self._lock:
            group = self._by_key.get(k)
            if group is None:
                group = self._by_key[k] = set()
                if self._on_first is not None:
                    self._on_first(k)
            group.add(w)
        try:
            yield w
        finally:
            with self._lock:
                group = self._by_key.get(k)
                if group is not None:
                    group.discard(w)
                    if not group:
                        del self._by_key[k]
                        if self._on_last is not None:
                            self._on_last(k)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._by_key)

    def wake(self, k: str) -> None:
        with self._lock:
            group = list(self._by_key.get(k, ()))
        for w in group:
            w.wake()

    def wake_all(self) -> None:
        with self._lock:
            group = [w for ws in self._by_key.values() for w in ws]
        for w in group:
            w.wake()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(ws) for ws in self._by_key.values())


class Notifier(Protocol):
    """Carries "something committed under this key" to waiters."""

    waiters: Waiters

    def notify(self, k: str) -> None:
        """Called after the commit; must never raise."""

    def start(self) -> None:
        """Begin listening in this process (idempotent)."""

    def stop(self) -> None: ...


class LocalNotifier:
    """In-process wakeups only; other processes are reached by polling."""

    def __init__(self) -> None:
        self.waiters = Waiters()

    def notify(self, k: str) -> None:
        self.waiters.wake(k)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Publisher:
    """PUBLISH without waiting for its answer (the count of receivers, which
    nothing uses): the caller pays for the send, not the round trip. The
    answers are read before later sends, or all of them once MAX_UNREAD
    pile up; a connection found closed then (Redis restarted while it was
    idle) is replaced before the send, so that no hint goes into a dead
    socket. One connection, shared by the threads of one process."""

    MAX_UNREAD = 64

    def __init__(self, url: str) -> None:
        self._pool = redis.ConnectionPool.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=1.0
        )
        self._conn: Any = None
        self._unread = 0
        self._lock = threading.Lock()

    def publish(self, channel: str, message: str) -> None:
        with self._lock:
            conn = self._ready()
            try:
                conn.send_command("PUBLISH", channel, message)
            except BaseException:
                self._drop()
                raise
            self._unread += 1

    def _ready(self) -> Any:
        """The connection, its waiting answers read; a new one if it closed."""
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._pool.make_connection()
            conn = self._conn
            try:
                while self._unread >= self.MAX_UNREAD or conn.can_read(timeout=0):
                    self._unread -= 1
                    conn.read_response()  # raises at once on a closed connection
                return conn
            except (redis.ConnectionError, OSError):
                self._drop()
                if attempt == 2:
                    raise
            except BaseException:
                self._drop()
                raise
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        conn, self._conn, self._unread = self._conn, None, 0
        if conn is not None:
            conn.disconnect()

    def close(self) -> None:
        with self._lock:
            self._drop()


class RedisNotifier:
    """Redis PUBLISH after commit; one subscriber connection per process.

    Each key has its own channel, and a process subscribes only to the keys
    its waiters wait for: a hint reaches the processes that wait for it, not
    every process of the cluster (a finished workflow's hint would otherwise
    wake every worker). One thread reads the subscription and fans out; the
    waiters' threads send SUBSCRIBE / UNSUBSCRIBE on it (redis-py serializes
    sends; only the reader thread reads). A key whose last waiter left stays
    subscribed for LINGER seconds, so a workflow that recvs in a loop does not
    (un)subscribe at every message.
    """

    LINGER = 1.0

    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self.waiters = Waiters(self._subscribe_key, self._unsubscribe_key)
        self._pubsub: Any = None
        # keys with no waiter left, still subscribed, and since when
        # (guarded by the waiters' lock, like every (un)subscribe)
        self._lingering: dict[str, float] = {}
        self._publisher: Publisher | None = None
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._subscribed = threading.Event()
        self._publishing = LogOnce(
            "Redis wakeup publish failed (%s); messages are still delivered through "
            "Postgres polling. Logged once until Redis recovers.",
            "Redis wakeup publish works again",
        )
        self._listening = LogOnce(
            "Redis wakeup subscriber lost its connection (%s); waiters fall back to "
            "polling until it reconnects",
            "Redis wakeup subscriber reconnected",
        )

    def _here(self) -> Publisher:
        """This process's publisher; a forked child starts afresh (the
        parent's connections and thread are not its own)."""
        if self._publisher is None or self._pid != os.getpid():
            self._publisher = Publisher(self.url)
            self._pid = os.getpid()
            self._thread = None
            self._pubsub = None  # the parent's, if forked
            self._start_lock = threading.Lock()  # a fork may copy it held
            self._subscribed.clear()
        return self._publisher

    def notify(self, k: str) -> None:
        self.waiters.wake(k)
        try:
            self._here().publish(self.channel + k, k)
        except (redis.RedisError, OSError) as exc:
            self._publishing.failed(exc)
            return
        self._publishing.ok()

    def start(self, wait: float = 1.0) -> None:
        self._here()
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                # listening, or reconnecting while waiters poll: never block
                # a recv on Redis (that cost every recv up to `wait` seconds
                # while Redis was down, even with its message already stored)
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._listen, name="dbos-celery-wakeups", daemon=True
            )
            self._thread.start()
        # a fresh subscriber: give it a moment so that the first wait gets its hint
        self._subscribed.wait(wait)

    def stop(self) -> None:
        self._stop.set()
        if self._pid == os.getpid():
            if self._thread is not None:
                self._thread.join(timeout=3)
            if self._publisher is not None:
                self._publisher.close()
        self._thread = None

    def _subscribe_key(self, k: str) -> None:
        if self._lingering.pop(k, None) is None:
            self._send("subscribe", [k])

    def _unsubscribe_key(self, k: str) -> None:
        self._lingering[k] = time.monotonic()

    def _drop_lingering(self) -> None:
        """Unsubscribe the keys nobody has waited for in LINGER seconds."""
        now = time.monotonic()
        with self.waiters._lock:
            old = [k for k, since in self._lingering.items() if now - since > self.LINGER]
            for k in old:
                del self._lingering[k]
            if old:
                self._send("unsubscribe", old)

    def _send(self, command: str, keys: list[str]) -> None:
        """(Un)subscribe keys' channels without waiting for the reply; while
        disconnected, the reconnect subscribes every waited-for key."""
        pubsub = self._pubsub
        if pubsub is None or self._pid != os.getpid():
            return
        try:
            getattr(pubsub, command)(*(self.channel + k for k in keys))
        except (redis.RedisError, OSError):
            pass  # the reader notices the broken connection and reconnects

    def _listen(self) -> None:
        delays = backoff(0.05, 1.0)
        while not self._stop.is_set():
            pubsub = None
            try:
                client = redis.Redis.from_url(
                    self.url, socket_connect_timeout=1.0, health_check_interval=10
                )
                pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                with self.waiters._lock:  # no key may come or go meanwhile
                    keys = list(self.waiters._by_key)
                    self._lingering.clear()
                    pubsub.subscribe(self.channel, *(self.channel + k for k in keys))
                    self._pubsub = pubsub
                self._subscribed.set()
                self._listening.ok()
                delays = backoff(0.05, 1.0)
                self.waiters.wake_all()  # hints may have been lost meanwhile
                swept = time.monotonic()
                while not self._stop.is_set():
                    # short reads: stop() joins this thread, so close() waits on it
                    m = pubsub.get_message(timeout=0.2)
                    if m is not None and m["type"] == "message":
                        data = m["data"]
                        self.waiters.wake(data.decode() if isinstance(data, bytes) else data)
                    if self._lingering and time.monotonic() - swept > self.LINGER / 2:
                        swept = time.monotonic()
                        self._drop_lingering()
            except (redis.RedisError, OSError, ValueError) as exc:
                self._pubsub = None
                self._subscribed.clear()
                self._listening.failed(exc)
                self._stop.wait(next(delays))
            finally:
                self._pubsub = None
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
