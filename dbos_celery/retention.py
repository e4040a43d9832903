"""Retention: ``garbage_collect`` deletes finished workflows older than a
cutoff with everything that belongs to them, in short batches that are safe
while workers run; ``Retention`` does it automatically from a worker's main
process (one worker at a time, at a bounded rate) when ``Durable(...,
retention=...)`` is set.

What a workflow's rows are for ends with it, except two things: a finished
workflow can be resumed (CANCELLED, MAX_RECOVERY_ATTEMPTS_EXCEEDED) or forked,
and a send's idempotency key protects its destination against a retried
send. Both last until the workflow is collected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from .keys import retention_lock
from .loops import Periodic
from .store import retention
from .validation import check_number

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger("dbos_celery")

BATCH = 1000
# the automatic collection: every EVERY seconds, at most BATCHES batches
EVERY = 10.0
BATCHES = 5


def seconds(value: object, what: str) -> float:
    """A duration given as a ``timedelta`` or a number of seconds (>= 0)."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    check_number(value, what)
    assert isinstance(value, (int, float))
    return float(value)


def check_keep(keep_latest: object) -> int | None:
    if keep_latest is None:
        return None
    check_number(keep_latest, "keep_latest", integer=True)
    assert isinstance(keep_latest, int)
    return keep_latest


def garbage_collect(
    sv: Services,
    older_than: float | timedelta,
    keep_latest: int | None = None,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete the workflows in a final status last updated more than
    ``older_than`` ago (but not the ``keep_latest`` newest of them) with
    their steps, call records, events, leftover messages and send keys, in
    batches of ``BATCH``; how many (``dry_run``: how many it would, deleting
    nothing). ``progress(total so far)`` after each batch."""
    age = seconds(older_than, "older_than")
    keep = check_keep(keep_latest)
    cutoff = time.time() - age
    if dry_run:
        return sv.store.now(retention.count_due, cutoff, keep)
    total = 0
    while True:
        deleted = sv.store.run(retention.delete_batch, cutoff, keep, BATCH) or 0
        total += deleted
        if progress is not None:
            progress(total)
        if deleted < BATCH:
            return total


class Retention:
    """The automatic collection, in a worker's main process: every ``EVERY``
    seconds, up to ``BATCHES`` batches, each under a cluster-wide lock so that
    one worker at a time collects."""

    def __init__(self, sv: Services, keep_for: float) -> None:
        self.sv = sv
        self.keep_for = keep_for
        self._loop = Periodic(
            "dbos-celery-retention", EVERY, self._tick,
            failed="retention: collection failed (%s); retrying",
        )  # fmt: skip

    def _tick(self) -> None:
        self.collect_once()

    def collect_once(self) -> int:
        """One pass; how many workflows it deleted."""
        sv = self.sv
        lock = retention_lock(sv.settings.schema)
        cutoff = time.time() - self.keep_for
        total = 0
        for _ in range(BATCHES):
            deleted = sv.store.run(retention.delete_batch, cutoff, None, BATCH, lock)
            if not deleted:  # None: another worker collects now
                break
            total += deleted
            if deleted < BATCH:
                break
        if total:
            log.info("retention: deleted %d finished workflows older than %s", total,
                     timedelta(seconds=self.keep_for))  # fmt: skip
        return total

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop(timeout=5)
