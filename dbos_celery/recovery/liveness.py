"""A worker's beater, seen from the worker: started by its main process
before the pool forks, kept running, stopped with the worker.

The beater (``beater.py``) heartbeats for every process of the worker that
runs workflows, from a process of its own that runs no user code, so that a
step holding the GIL or the CPU never makes its process look dead. Outside
a Celery worker (a producer, a test calling a workflow in-process) there is
no beater: a process beats for itself from a thread.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..store import kills, workers
from .beater import LeaseBoard

if TYPE_CHECKING:
    from ..config import Settings
    from ..store.engine import Database

log = logging.getLogger("dbos_celery")

_SCRIPT = Path(__file__).with_name("beater.py")
# slots beyond the pool's processes: the main process, and children that
# replace others (max_tasks_per_child) before the beater frees the slots
# of those that exited
SPARE_SLOTS = 16


class Liveness:
    """The beater of one worker and the board its processes share."""

    def __init__(self, store: Database, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.board: LeaseBoard | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0  # the process that started the beater
        self._beats = 0  # the beater's rounds, when last seen to change
        self._stalled = 0.0

    def start(self, processes: int) -> None:
        """In the worker's main process, before the pool forks: make the
        board for ``processes`` pool processes and start the beater."""
        if self.board is not None or not hasattr(os, "fork"):
            return  # (no fork, no prefork: the threads beat as before)
        self.board = LeaseBoard.create(processes + SPARE_SLOTS)
        self._owner = os.getpid()
        self._spawn()

    def stop(self) -> None:
        """Stop the beater and close the board, for a worker whose process
        goes on (one run in a test's process), once the worker has stopped
        and this process's runtime has let go of the board; a later
        ``start`` makes new ones. (A worker process's beater exits by itself
        after the process. It ignores SIGTERM, so that a warm shutdown keeps
        the leases of the runs still finishing: it is killed.) In a forked
        child, the parent's beater is left alone."""
        proc, board = self._proc, self.board
        self._proc = self.board = None
        self._beats, self._stalled = 0, 0.0
        if proc is not None and self._owner == os.getpid():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        if board is not None:
            board.close()

    def _spawn(self) -> None:
        assert self.board is not None
        config = {
            **self.store.connection_info(),
            "beat": self.store.compiled(workers.BEAT),
            "dead": self.store.compiled(workers.DEAD),
            "crashed": self.store.compiled(kills.CRASHED),
            "heartbeat_interval": self.settings.heartbeat_interval,
            "worker_timeout": self.settings.worker_timeout,
            "parent": os.getpid(),
            "board_fd": self.board.fd,
        }
        # a script, not a fork: nothing of the worker (its threads, its event
        # loop, its connections) comes along; it imports only the driver
        proc = subprocess.Popen(
            [sys.executable, str(_SCRIPT)], stdin=subprocess.PIPE, pass_fds=(self.board.fd,),
            close_fds=True,
        )  # fmt: skip
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
        self._proc = proc

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until the beater has done a round (it beats for the processes
        that claimed a slot before it started); whether it has."""
        board = self.board
        if board is None:
            return True
        deadline = time.monotonic() + timeout
        while board.beats == 0:
            if time.monotonic() >= deadline:
                log.error("the dbos-celery beater did not start within %.0f s", timeout)
                return False
            time.sleep(0.01)
        return True

    def ensure(self) -> None:
        """In the main process, now and then: start the beater again if it
        died (while it is gone, leases lapse and runs stop at their next
        boundary, to be taken over). It exits by itself after the main
        process, once the pool's processes are gone."""
        proc, board = self._proc, self.board
        if proc is None or board is None:
            return
        beats = board.beats
        if beats != self._beats:
            self._beats, self._stalled = beats, time.monotonic()
            return
        # no round for a while, and the process is gone (not only slow)
        if time.monotonic() - self._stalled < 3 * self.settings.heartbeat_interval + 2.0:
            return
        if proc.poll() is None:
            return
        log.error("the dbos-celery beater exited (code %s); starting it again", proc.returncode)
        self._spawn()
        self._stalled = time.monotonic()
