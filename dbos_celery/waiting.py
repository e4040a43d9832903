"""The one wait loop: register, check, park or wait with a bound, re-check.

Every wait of the package (recv, get_event, sleep, a child's result, the
outcomes of durable.calls) is a :class:`Wait` run by :func:`wait_for`:

1. register a waiter for the wait's wakeup key (and, in a workflow, for its
   cancel key) before reading anything, so that no hint is missed;
2. check the truth (Postgres); found: return it;
3. otherwise fix the deadline (in a workflow, a durable one: checkpointed
   the first time a wait is needed) and loop: past the deadline return
   None; when the slot should be freed, park (the run ends, ``Parked``);
   else wait for a hint, at most ``poll_interval`` and never past the
   deadline, the park time or the workflow's own deadline; re-check.
   The slot should be freed once ``park_after`` has passed, before the
   Celery task's time limit would end the run, or at once when the worker
   wants it (requests waiting for one, or a shutdown: ``slots.py``).

A lost hint costs at most one poll interval; a cancel or a timeout of the
workflow ends the wait at once with WorkflowCancelledError.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Generic, TypeVar

from . import cancellation, parking
from .checkpoint import flush

if TYPE_CHECKING:
    from .context import WorkflowContext
    from .services import Services
    from .wakeup import Waiter

T = TypeVar("T")


def _no_deadline() -> float | None:
    return None


class Wait(Generic[T]):
    """One wait: what it listens to, how to check, when to give up.

    - ``key``: the wakeup key it listens to, and parks on;
    - ``check()``: the awaited value, or None while it is not there;
    - ``deadline()``: called once, after the first check found nothing:
      when to give up (None: never), on ``clock`` (in a workflow: epoch
      seconds, so that a parked or recovered run keeps it);
    - ``wake_at(deadline)``: when a parked run must run again (default: the
      deadline);
    - ``parks_at``: monotonic time at which it parks (None: never);
    - ``listen``: register a waiter for ``key`` (False: nothing publishes
      it, e.g. a sleep);
    - ``poll``: the longest wait between checks;
    - ``begin()``: run once it listens, before the first check (e.g. send
      what it waits for, so that no hint is missed).
    """

    def __init__(
        self,
        key: str,
        check: Callable[[], T | None],
        *,
        deadline: Callable[[], float | None] = _no_deadline,
        wake_at: Callable[[float | None], float | None] | None = None,
        clock: Callable[[], float] = time.time,
        parks_at: float | None = None,
        listen: bool = True,
        poll: float,
        begin: Callable[[], None] | None = None,
    ) -> None:
        self.key = key
        self.check = check
        self.deadline = deadline
        self.wake_at = wake_at or (lambda deadline: deadline)
        self.clock = clock
        self.parks_at = parks_at
        self.listen = listen
        self.poll = poll
        self.begin = begin


def wait_for(sv: Services, ctx: WorkflowContext | None, w: Wait[T]) -> T | None:
    """Run the wait; its value, or None once its deadline passed. Inside a
    workflow (``ctx``) it also stops on a cancel or the workflow's deadline,
    and parks (raises Parked) when ``w.parks_at`` comes."""
    cancellation.check(sv, ctx)
    if ctx is not None:
        flush(sv, ctx)  # a held step checkpoint is not kept through a wait
    sv.notifier.start()
    with ExitStack() as stack:
        waiter: Waiter | None = None
        if w.listen:
            waiter = stack.enter_context(sv.notifier.waiters.register(w.key))
        if ctx is not None:
            waiter = stack.enter_context(cancellation.watch(sv.notifier, ctx, waiter))
        assert waiter is not None, "a wait outside a workflow listens to its key"
        if w.begin is not None:
            w.begin()
        got = w.check()
        if got is not None:
            return got
        deadline = w.deadline()
        while True:
            remaining = None if deadline is None else deadline - w.clock()
            if remaining is not None and remaining <= 0:
                return None
            if ctx is not None and _park_now(sv, w, ctx, deadline):
                parking.park(sv, ctx, w.key, w.wake_at(deadline))  # raises unless ready
                w.parks_at = parking.parks_at(sv.settings)
            else:
                waiter.wait(cancellation.bound(ctx, _bound(w, ctx, remaining)))
                cancellation.check(sv, ctx)
            got = w.check()
            if got is not None:
                return got


def _park_time(w: Wait[T], ctx: WorkflowContext | None) -> float | None:
    """The monotonic time at which the wait parks: after ``park_after``, or
    before the task's time limit, whichever comes first (None: never)."""
    times = [t for t in (w.parks_at, None if ctx is None else ctx.park_by) if t is not None]
    return min(times, default=None)


def _park_now(sv: Services, w: Wait[T], ctx: WorkflowContext, deadline: float | None) -> bool:
    wake_at = w.wake_at(deadline)
    remaining = None if wake_at is None else wake_at - time.time()
    return parking.should_park(sv, _park_time(w, ctx), remaining)


def _bound(w: Wait[T], ctx: WorkflowContext | None, remaining: float | None) -> float:
    """How long to wait for a hint before checking again."""
    wait = w.poll if remaining is None else min(w.poll, remaining)
    at = _park_time(w, ctx)
    if at is not None:
        wait = max(0.0, min(wait, at - time.monotonic()))
    return wait
