"""Wall-clock stamps at the hops of a wakeup, for messaging.py's timeline.

``install()`` wraps, in this process only, the library functions a wakeup
passes through, and keeps the last time each was reached (``time.time()``,
which every process on the machine shares): the notifier's ``notify``
(entered right after the sender's commit), the subscriber thread's fan-out
to waiters, a waiter's wait returning, and the consume statement. Benchmark
code only: the library itself is not changed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from dbos_celery import wakeup
from dbos_celery.store import messages

LAST: dict[str, float] = {}


def _stamped(fn: Callable[..., Any], before: str | None, after: str | None) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before:
            LAST[before] = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            if after:
                LAST[after] = time.time()

    return wrapper


def install() -> None:
    if LAST.get("installed"):
        return
    LAST["installed"] = 1.0
    wakeup.RedisNotifier.notify = _stamped(wakeup.RedisNotifier.notify, "committed", None)  # type: ignore[method-assign]
    wakeup.Waiters.wake = _stamped(wakeup.Waiters.wake, "fanned_out", None)  # type: ignore[method-assign]
    wakeup.Waiter.wait = _stamped(wakeup.Waiter.wait, None, "waiter_woke")  # type: ignore[method-assign]
    messages.consume_message = _stamped(messages.consume_message, "consume", "consumed")  # type: ignore[assignment]
