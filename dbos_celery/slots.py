"""Whether this worker wants its slots back: requests are waiting for a slot,
or the worker is shutting down.

A waiting workflow holds a Celery slot; when the slot is wanted, the wait
parks at once instead of after ``park_after`` (``parking.should_park``). The
worker's main process knows (Celery's worker state: reserved requests not
yet running, ``should_stop``); under prefork the workflows run in the pool's
children, which do not. A counter in shared memory, made before the pool
forks, carries it to them: the main process refreshes it every
``REFRESH`` seconds and at once when a message arrives or a shutdown
begins; a wait reads it before each sleep (a read of shared memory, no
round trip).
"""

from __future__ import annotations

from multiprocessing.sharedctypes import RawValue
from typing import Any

# the value while the worker shuts down; otherwise the count of requests
# waiting for a slot
SHUTTING_DOWN = -1
REFRESH = 0.1


class SlotDemand:
    """The shared counter of one worker (none outside a worker)."""

    def __init__(self) -> None:
        self._value: Any = None
        self._slots = 0
        self._seen = 0  # requests found waiting at the last refresh

    def create(self, slots: int) -> None:
        """In the worker's main process, before the pool forks; ``slots``:
        how many tasks it runs at once. The count starts at zero: a worker
        started after another in the same process (a test's) does not see
        the shutdown of the first."""
        self._slots = slots
        self._seen = 0
        if self._value is None:
            self._value = RawValue("i", 0)
        else:
            self._value.value = 0

    def wanted(self) -> bool:
        """True when a request waits for a slot or the worker shuts down."""
        value = self._value
        return value is not None and value.value != 0

    def refresh(self) -> None:
        """In the worker's main process: count the requests waiting for a
        slot while every slot is busy, or mark the shutdown. A request is
        counted once it has waited through two refreshes (not while an idle
        pool process is about to take it), and not when it is another
        delivery of a task that is running (it is dropped at once)."""
        value = self._value
        if value is None or value.value == SHUTTING_DOWN:
            return
        from celery.worker import state

        if state.should_stop not in (None, False) or state.should_terminate not in (None, False):
            value.value = SHUTTING_DOWN
            return
        try:
            reserved = list(state.reserved_requests)
        except RuntimeError:  # changed while read (the consumer's thread): next time
            return
        active = list(state.active_requests)
        running = {r.id for r in active}
        waiting = sum(1 for r in reserved if r not in active and r.id not in running)
        if len(active) < self._slots:
            waiting = 0  # a free slot will take it
        value.value = waiting if self._seen else 0
        self._seen = waiting

    def shutting_down(self) -> None:
        if self._value is not None:
            self._value.value = SHUTTING_DOWN
