"""The one backoff helper and the one periodic-loop helper.

Every retry in the package sleeps through :func:`backoff`, and every
background loop (heartbeat, sweep) is a :class:`Periodic`. A failure that
repeats is logged once, when it starts, and once more when it stops
(:class:`LogOnce`), so that an outage does not flood the log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger("dbos_celery")


def backoff(first: float, cap: float, factor: float = 2.0) -> Iterator[float]:
    """Delays for successive retries: ``first``, then times ``factor`` each
    time, never above ``cap``."""
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)


class LogOnce:
    """Logs a failure when it starts and the recovery when it ends."""

    __slots__ = ("failing", "_failed", "_recovered")

    def __init__(self, failed: str, recovered: str | None = None) -> None:
        self._failed = failed  # a %-format taking the exception
        self._recovered = recovered
        self.failing = False

    def failed(self, exc: BaseException) -> None:
        if not self.failing:
            log.warning(self._failed, exc)
            self.failing = True

    def ok(self) -> None:
        if self.failing:
            self.failing = False
            if self._recovered is not None:
                log.info(self._recovered)


class Periodic:
    """Runs ``fn`` in a daemon thread every ``interval`` seconds until
    stopped (``first``: run once before the first wait). A failing ``fn`` is
    logged once and retried at the next tick."""

    def __init__(
        self,
        name: str,
        interval: float,
        fn: Callable[[], None],
        *,
        first: bool = False,
        failed: str = "%s",
        recovered: str | None = None,
    ) -> None:
        self.name = name
        self.interval = interval
        self.fn = fn
        self.first = first
        self.health = LogOnce(failed, recovered)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _tick(self) -> None:
        try:
            self.fn()
        except Exception as exc:
            self.health.failed(exc)
        else:
            self.health.ok()

    def _loop(self) -> None:
        if self.first:
            self._tick()
        while not self._stop.wait(self.interval):
            self._tick()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
