"""The recovery sweep: one at a time across the cluster (a lock), run every
``sweep_interval`` by each worker's main process.

It cancels the live workflows whose deadline passed, wakes parked ones whose
time came or whose awaited message, event or outcome exists, and
re-publishes the workflows of dead executors and the messages prefetched by a
worker that died. Recovery never waits for the broker's visibility timeout
nor relies on acks_late.

An enqueued workflow that no worker has received is re-published only when
its message is really gone: its queue was seen empty (the broker is asked,
``broker.py``) a little while after the row was published, and still no
worker has it. A long but healthy queue is left alone, whatever its length
and age (a message lost in a queue that never drains waits for it to). When
the broker cannot be asked, rows unreceived for ``enqueued_timeout`` are
published again, with exponential backoff.

Every few seconds it also reports workflows no live worker has registered,
and every minute it forgets the keys of send() calls older than an hour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..cancellation import notify_stopped
from ..keys import done_key
from ..loops import Periodic
from ..status import Status
from ..store import messages, workers
from ..store.workers import WOKEN, Recovered

if TYPE_CHECKING:
    from ..config import Settings
    from ..store.engine import Database
    from ..wakeup import Notifier

log = logging.getLogger("dbos_celery")

# how often, and after how long in the queue, workflows that no live worker
# has registered are looked for
NAMES_EVERY = 5.0
NAMES_GRACE = 5.0
# how often the keys of old send() calls are forgotten
PRUNE_EVERY = 60.0
# a queue seen empty vouches for the rows published before, once this much
# longer has passed without any worker recording them (a worker that took
# the message records it with its next heartbeat, or runs it)
DRAIN_SLACK = 2.0
# one pass in this many (and the first) also looks for rows whose worker has
# no row at all, which needs every live row read
FULL_EVERY = 20
UNREGISTERED = (
    "workflow %r has queued runs but no live worker has registered it, so workers discard "
    "its messages as unregistered tasks: import the module that defines it in the worker "
    "(Celery's include=[...], app.autodiscover_tasks(related_name=...), or "
    "durable.autodiscover(...))"
)


class Sweeper:
    """Runs the recovery sweep now (``sweep_once``) or every
    ``sweep_interval`` seconds in a thread (``start``)."""

    def __init__(
        self,
        store: Database,
        settings: Settings,
        notifier: Notifier,
        publish: Callable[[str, str, str | None], None],
        depths: Callable[[str | None], int | None],
    ) -> None:
        self.store = store
        self.settings = settings
        self.notifier = notifier
        self.publish = publish
        self.depths = depths  # messages in a queue (None: unknown)
        self._empty: dict[str, list[float]] = {}  # queue -> monotonic times seen empty
        self._ready_after = ""  # the cursor of the pages of parked rows
        self._passes = 0
        self._names_due = 0.0  # monotonic: next look for unregistered workflows
        self._prune_due = 0.0  # monotonic: next prune of send() call keys
        self._reported: set[str] = set()
        self._loop = Periodic(
            "dbos-celery-sweeper",
            settings.sweep_interval,
            self._sweep,
            first=True,
            failed="recovery sweep failed (%s); retrying",
        )

    def _sweep(self) -> None:
        self.sweep_once()
        now = time.monotonic()
        if now >= self._names_due:
            self._names_due = now + NAMES_EVERY
            self.report_unregistered()
        if now >= self._prune_due:
            self._prune_due = now + PRUNE_EVERY
            self.store.now(messages.prune_call_keys)

    def report_unregistered(self) -> list[str]:
        """Log, once per name while it lasts, the workflows queued for a
        while that no live worker has registered (every worker discards
        their messages as unregistered tasks); their names."""
        s = self.settings
        names = self.store.now(workers.unregistered, s.worker_timeout, NAMES_GRACE)
        for name in names:
            if name not in self._reported:
                log.error(UNREGISTERED, name)
        self._reported = set(names)
        return names

    def sweep_once(self) -> list[Recovered]:
        s = self.settings
        full = self._passes % FULL_EVERY == 0
        self._passes += 1
        found = self.store.run(
            workers.sweep, s.schema, s.worker_timeout, s.max_recovery_attempts,
            s.enqueued_timeout, full,
        )  # fmt: skip
        recovered = [*(found or []), *self._wake_ready(found is not None), *self._republish_lost()]
        for i, r in enumerate(recovered):
            if r.status in (WOKEN, Status.ENQUEUED):
                self._republish(r, recovered[i:])
            elif r.status == Status.CANCELLED:
                log.info("workflow %s passed its deadline; cancelled", r.id,
                         extra={"workflow_id": r.id})  # fmt: skip
                notify_stopped(self.notifier, r.id)
            else:
                log.error("workflow %s exceeded max_recovery_attempts=%d; not retrying it",
                          r.id, s.max_recovery_attempts, extra={"workflow_id": r.id})  # fmt: skip
                self.notifier.notify(done_key(r.id))
        return recovered

    def _wake_ready(self, holder: bool) -> list[Recovered]:
        """The holder of the sweep's lock looks at the next page of parked
        rows for those whose awaited message, event or outcome exists (the
        safety net behind the writers' own wakes)."""
        if not holder:
            return []
        woken, self._ready_after = self.store.now(workers.wake_ready_page, self._ready_after)
        return woken

    def _republish_lost(self) -> list[Recovered]:
        """The rows unreceived within enqueued_timeout whose queue was seen
        empty at least DRAIN_SLACK after they were published (and
        DRAIN_SLACK ago): their message is gone."""
        s = self.settings
        queues = self.store.now(workers.unreceived_queues, s.enqueued_timeout)
        slack = max(DRAIN_SLACK, 4 * s.heartbeat_interval)
        now = time.monotonic()
        lost: list[Recovered] = []
        self._empty = {q: self._empty.get(q, []) for q in queues}
        for queue, seen in self._empty.items():
            depth = self.depths(queue or None)
            if depth is None:  # the broker cannot say: by age, with backoff
                lost += self.store.now(workers.republish_unreceived, queue, s.enqueued_timeout)
                continue
            if depth == 0:
                seen.append(now)
            vouching = [t for t in seen if now - t >= slack]
            if not vouching:
                continue
            seen[:] = [t for t in seen if t >= vouching[-1]]
            age = now - vouching[-1] + slack  # published before the look, by the slack
            lost += self.store.now(workers.republish_drained, queue, age, s.enqueued_timeout)
        return lost

    def _republish(self, r: Recovered, rest: list[Recovered]) -> None:
        if r.status == WOKEN:  # a parked workflow: what it waits for came
            log.debug("waking parked workflow %s (%s)", r.id, r.name, extra={"workflow_id": r.id})
        else:
            log.info("recovering workflow %s (%s)", r.id, r.name, extra={"workflow_id": r.id})
        try:
            self.publish(r.id, r.name, r.queue)
        except Exception:
            # the broker is down: these are due again at the next pass
            due = [x.id for x in rest if x.status in (WOKEN, Status.ENQUEUED)]
            self.store.now(workers.publish_failed, due, self.settings.enqueued_timeout)
            raise

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop(timeout=5)
