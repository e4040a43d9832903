"""Acting on what a caller's transaction wrote, once it has committed.

``start`` and ``send`` with ``connection=`` write their rows in the caller's
open transaction; the Celery message that runs the workflow (or the wakeup
of the recv waiting for the message) must wait for that commit, and must not
happen at all if it rolls back. Each such write leaves a :class:`_Pending`
here: a probe that tells whether the rows are visible (committed) and the
action to take then. One thread per process probes them, soon and then less
and less often (2 ms, 4 ms ... then every second), and at once when a commit
hook fires (:meth:`AfterCommit.kick`: Django's ``on_commit``, a SQLAlchemy
session's ``after_commit``). A row never seen within ``GIVE_UP`` seconds was
rolled back, or its transaction is still open: the recovery sweep publishes
a workflow committed later, and waiters poll for a late message, so nothing
is lost if this process dies or gives up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from .store.engine import Database, Executor

log = logging.getLogger("dbos_celery")

# (executor, keys) -> the keys whose rows are visible
Probe = Callable[[Executor, list[Any]], set[Any]]

FIRST_DELAY = 0.002
MAX_DELAY = 1.0
GIVE_UP = 60.0


@dataclass
class _Pending:
    probe: Probe
    key: Hashable
    act: Callable[[], None]
    since: float
    due: float
    delay: float = field(default=FIRST_DELAY)


class AfterCommit:
    """The pending after-commit actions of one process, and their thread."""

    def __init__(self, store: Database) -> None:
        self.store = store
        self.pid = os.getpid()
        self._pending: list[_Pending] = []
        self._cond = threading.Condition()
        self._kicked = False
        self._stopped = False
        self._thread: threading.Thread | None = None

    def add(self, probe: Probe, key: Hashable, act: Callable[[], None]) -> None:
        """Run ``act`` once ``probe`` sees ``key`` (the caller's transaction
        committed); never if it does not within GIVE_UP seconds."""
        now = time.monotonic()
        with self._cond:
            self._pending.append(_Pending(probe, key, act, now, now + FIRST_DELAY))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="dbos-celery-after-commit", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def kick(self) -> None:
        """A transaction committed: probe everything pending now."""
        with self._cond:
            self._kicked = True
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._kicked and self._pending:
                        break
                    due = min((p.due for p in self._pending), default=None)
                    wait = None if due is None else due - time.monotonic()
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopped:
                    return
                kicked, self._kicked = self._kicked, False
                now = time.monotonic()
                batch = [p for p in self._pending if kicked or p.due <= now]
            try:
                done = self._probe(batch)
            except Exception:  # the database is away: try again later
                log.warning("after-commit check failed; retrying", exc_info=True)
                done = set()
            self._settle(batch, done)

    def _probe(self, batch: list[_Pending]) -> set[int]:
        """The ids (``id()``) of the pending items whose rows are visible."""
        by_probe: dict[Probe, list[_Pending]] = {}
        for p in batch:
            by_probe.setdefault(p.probe, []).append(p)

        def look(ex: Executor) -> set[int]:
            seen: set[int] = set()
            for probe, items in by_probe.items():
                found = probe(ex, [p.key for p in items])
                seen.update(id(p) for p in items if p.key in found)
            return seen

        return self.store.now(look)

    def _settle(self, batch: list[_Pending], done: set[int]) -> None:
        now = time.monotonic()
        with self._cond:
            for p in batch:
                if id(p) in done or now - p.since >= GIVE_UP:
                    self._pending.remove(p)
                else:
                    p.delay = min(p.delay * 2, MAX_DELAY)
                    p.due = now + p.delay
        for p in batch:
            if id(p) not in done:
                if now - p.since >= GIVE_UP:
                    log.debug("after-commit: %r not committed within %.0f s", p.key, GIVE_UP)
                continue
            try:
                p.act()
            except Exception:  # the sweep publishes a lost start; waiters poll
                log.warning("after-commit action for %r failed", p.key, exc_info=True)


def after_commit(
    pending: AfterCommit,
    autocommit: bool,
    hook: Callable[[Callable[[], None]], None] | None,
    probe: Probe,
    key: Hashable,
    act: Callable[[], None],
) -> None:
    """Run ``act`` once the caller's transaction has committed what ``key``
    names: at once when it committed already (``autocommit``), else when
    ``probe`` sees it (``hook`` registers a kick for the commit); never if it
    rolls back."""
    if autocommit:
        act()
        return
    pending.add(probe, key, act)
    if hook is not None:
        hook(pending.kick)
