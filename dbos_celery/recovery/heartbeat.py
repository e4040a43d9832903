"""The per-process state of a process that runs workflows.

Every such process has a :class:`ProcessRuntime`: an executor id, its
lease, and a heartbeat thread. In a Celery worker the worker's beater
(``beater.py``, a process of its own) keeps the process's row in
``workers`` fresh and renews its lease in shared memory, so that a step
holding the GIL never makes it look dead; elsewhere the thread beats. The
thread records which workflow messages this process has received but not
started (so that a dead worker's prefetched messages are found at once).
Each round also asks which
of the workflows the process runs are no longer its own (cancelled, timed
out, taken over), so that they stop even without a Redis hint, and gives
back the leases of runs it stopped while the database was away.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..keys import cancel_key, parse_task_id
from ..loops import Periodic
from ..store import steps, workers, workflows
from .beater import LeaseBoard, clock, renewed

if TYPE_CHECKING:
    from ..config import Settings
    from ..context import WorkflowContext
    from ..store.engine import Database

log = logging.getLogger("dbos_celery")


class ProcessRuntime:
    """Per-process state: created lazily, and again after a fork."""

    def __init__(
        self,
        store: Database,
        settings: Settings,
        publish: Callable[[str, str, str | None], None],
        wake: Callable[[str], None],
        names: Callable[[], list[str]],
        board: LeaseBoard | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.publish = publish
        self._wake = wake  # wakes this process's waiters of a key
        self._names: Callable[[], list[str]] | None = names  # registered workflows, until sent
        self.pid = os.getpid()
        self.hostname = socket.gethostname()
        self.executor_id = f"{self.hostname}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self._reserved: list[str] = []  # received since the last beat
        self._tracked: set[str] = set()  # received, not yet seen to leave
        self._calls: set[str] = set()  # task ids of durable.calls received, still held
        self._running: dict[int, WorkflowContext] = {}
        # workflows this process stopped running while the database was away:
        # their lease is given back (and they are re-published) when it answers
        self._handed_back: set[str] = set()
        self._lock = threading.Lock()  # guards _reserved, _running, _handed_back
        self._start_lock = threading.Lock()
        self._loop: Periodic | None = None
        # the local lease (fencing): runs of this process may start new work
        # until this time (beater.clock), renewed by each heartbeat; a lapse
        # bumps the epoch, which ends the runs begun before it. In a worker,
        # both live in the board's slot, renewed by the beater.
        self._board = board
        self._slot: int | None = None
        self._lease_until = 0.0
        self._epoch = 0

    def start(self) -> None:
        """Write the first heartbeat before any claim, then keep beating."""
        if self._loop is not None:
            return
        with self._start_lock:
            if self._loop is not None:
                return
            self._beat()
            self._claim_slot()
            loop = Periodic(
                "dbos-celery-heartbeat",
                self.settings.heartbeat_interval,
                self._tick,
                failed="heartbeat failed (%s); retrying",
                recovered="heartbeat works again",
            )
            loop.start()
            self._loop = loop

    def _claim_slot(self) -> None:
        board = self._board
        if board is None:
            return
        self._slot = board.claim(self.pid, self.executor_id, self._lease_until)
        if self._slot is None:
            log.warning("the beater's board is full: process %d beats for itself (a step "
                        "holding the GIL may make it look dead)", self.pid)  # fmt: skip

    def note_call_received(self, task_id: str) -> None:
        """A copy of a durable.call task arrived. If its call has an outcome
        already (a copy sent again while the first was only queued, which
        has run since), revoke it now so that Celery discards it instead of
        running the task again; otherwise watch it at each beat."""
        with self._lock:
            self._calls.add(task_id)
        call = parse_task_id(task_id)
        if call is None:
            return
        try:
            # no retries: this runs in Celery's consumer, which must not
            # stall while the database is away
            with self.store.begin() as ex:
                settled = bool(steps.settled_calls(ex, [call]))
        except Exception as exc:  # the beats look again
            log.warning("could not check durable.call task %s (%s)", task_id, exc)
            return
        if settled:
            self._revoke([task_id])

    def note_reserved(self, workflow_id: str) -> None:
        with self._lock:
            self._reserved.append(workflow_id)
            self._tracked.add(workflow_id)

    def track(self, ctx: WorkflowContext) -> None:
        """A workflow this process runs now (until ``untrack``)."""
        with self._lock:
            self._running[id(ctx)] = ctx

    def untrack(self, ctx: WorkflowContext) -> None:
        with self._lock:
            self._running.pop(id(ctx), None)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until this process runs no workflow (at most ``timeout``
        seconds); whether it does not."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._running:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def hand_back(self, workflow_id: str) -> None:
        """Give back this process's lease on a workflow it stopped running
        (ENQUEUED again) and re-publish it, so that a new delivery replays it
        from its checkpoints. Tried now; while the database is unavailable,
        again after every heartbeat that gets through, for as long as this
        process lives (if it dies, the sweep recovers the workflow anyway)."""
        with self._lock:
            self._handed_back.add(workflow_id)
        try:
            self._give_back(workflow_id)
        except Exception as exc:
            log.warning("could not give back workflow %s yet (%s); retrying", workflow_id, exc,
                        extra={"workflow_id": workflow_id})  # fmt: skip

    def _give_back(self, workflow_id: str) -> None:
        released = self.store.now(workflows.release_workflow, workflow_id, self.executor_id)
        with self._lock:
            self._handed_back.discard(workflow_id)
        if released is None:
            return  # finished, or another runner owns it now
        try:
            self.publish(*released)
        except Exception as exc:  # ENQUEUED: the sweep publishes it after enqueued_timeout
            log.warning("workflow %s given back but not published (%s)", workflow_id, exc,
                        extra={"workflow_id": workflow_id})  # fmt: skip

    def _retry_hand_backs(self) -> None:
        with self._lock:
            pending = sorted(self._handed_back)
        for workflow_id in pending:
            self._give_back(workflow_id)
            log.info("workflow %s given back after a database outage", workflow_id,
                     extra={"workflow_id": workflow_id})  # fmt: skip

    def _tick(self) -> None:
        self._beat()
        self._check_running()
        self._retry_hand_backs()

    def _beat(self) -> None:
        held = _held_by_consumer() if self._tracked or self._calls else set()
        with self._lock:
            reserved, self._reserved = self._reserved, []
            # received earlier and held no more: run (claimed, no longer
            # ENQUEUED) or dropped by Celery when its broker connection was
            # reset; the database forgets the reservation of the latter so
            # that the sweep re-publishes them
            dropped = sorted(self._tracked - held - set(reserved))
        names = self._names() if self._names is not None else None
        sent = clock()
        beats = self._slot is None  # else the beater beats for this process
        self.store.run(
            workers.heartbeat, self.executor_id, self.hostname, self.pid, reserved, dropped,
            names, beats,
        )  # fmt: skip
        self._names = None  # recorded with the first beat that got through
        if beats:
            self._renew(sent)
        with self._lock:
            self._tracked.difference_update(dropped)
            self._calls &= held
            calls = sorted(self._calls)
        if calls:
            self._revoke_settled(calls)

    def _renew(self, sent: float) -> None:
        """This process's own beat, sent at ``sent``, committed."""
        with self._lock:
            self._lease_until, self._epoch = renewed(
                self._lease_until, self._epoch, sent, self.settings.worker_timeout
            )

    def _lease(self) -> tuple[float, int]:
        if self._slot is not None:
            assert self._board is not None
            return self._board.lease(self._slot)
        return self._lease_until, self._epoch

    @property
    def epoch(self) -> int:
        """The lease epoch now: a run notes it when it claims its workflow."""
        return self._lease()[1]

    def lease_held(self, epoch: int) -> bool:
        """Whether a run begun under ``epoch`` still holds its lease, by the
        local clock (no round trip)."""
        until, now_epoch = self._lease()
        return epoch == now_epoch and clock() < until

    def _revoke_settled(self, task_ids: list[str]) -> None:
        """A copy of a durable.call task that this worker holds but has not
        run yet, whose outcome another copy has recorded (the call was sent
        again while the first copy was only late): revoke it here so that
        Celery discards it instead of running the task a second time. A copy
        already running is not stopped (tasks are at-least-once)."""
        from celery.worker import state

        # only copies waiting for a slot: a running one cannot be revoked,
        # so there is nothing to ask the database about it
        waiting = {r.id for r in state.reserved_requests if r not in state.active_requests}
        by_call = {parse_task_id(t): t for t in task_ids if t in waiting}
        pairs = [c for c in by_call if c is not None]
        if not pairs:
            return
        self._revoke([by_call[c] for c in self.store.now(steps.settled_calls, pairs)])

    def _revoke(self, task_ids: list[str]) -> None:
        from celery.worker import state

        for task_id in task_ids:
            state.revoked.add(task_id)
            log.info("durable.call task %s: its outcome is recorded; the copy this worker "
                     "holds is revoked", task_id)  # fmt: skip
        with self._lock:
            self._calls.difference_update(task_ids)

    def _check_running(self) -> None:
        """Flag the runs of this process whose workflow is no longer PENDING
        under it: they stop at their next boundary, or now if they wait."""
        with self._lock:
            running = list(self._running.values())
        if not running:
            return
        ids = sorted({c.workflow_id for c in running})
        gone = set(self.store.now(workflows.not_running_here, ids, self.executor_id))
        for ctx in running:
            if ctx.workflow_id in gone:
                ctx.stop_hint = True  # read the status at the next boundary
                self._wake(cancel_key(ctx.workflow_id))

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop(timeout=3)
        if self._slot is not None and self._board is not None:
            self._board.free(self._slot, self.executor_id)
            self._slot = None
        try:
            self.store.now(workers.delete_worker, self.executor_id)
        except Exception as exc:
            log.warning("could not remove worker row %s (%s)", self.executor_id, exc)


def _held_by_consumer() -> set[str]:
    """Ids of the task messages this process's Celery consumer holds now:
    prefetched (reserved), scheduled or being run by the pool. Celery drops
    the prefetched ones when the broker connection is reset."""
    from celery.worker import state

    return set(state.requests)
