"""The beater: one small process per Celery worker that heartbeats for the
worker's processes, so that liveness never depends on a thread sharing the
GIL (or the CPU) with a step.

A step that holds the GIL for a long C call stops every thread of its
process, the heartbeat thread included; a process that only computes is
alive all the same. So each worker's main process starts a beater (this
file, run as a script by ``liveness.py``: it imports nothing but the
standard library and the database driver, and runs no user code) and
shares a :class:`LeaseBoard` with it: a page of memory where every process
of the worker that runs workflows claims a slot (its pid and executor id).
Every ``heartbeat_interval`` the beater looks at each claimed process:

- alive (running, sleeping, holding the GIL, starved of CPU): it beats for
  it (one UPDATE for all of them) and, once that committed, renews the
  slot's lease: the process may start new work until ``sent +
  worker_timeout - margin``, read on the boot clock;
- stopped (SIGSTOP, a debugger) or the beater itself frozen: no beat; the
  database declares the process dead after ``worker_timeout`` and its
  lease lapses locally at the same time, so when it resumes it starts
  nothing more (fencing);
- gone (killed, OOM, a crash): its row is marked dead at once, so the next
  sweep recovers its workflows, and the slot is freed; each workflow it ran
  is marked killed (``store/kills.py``), so that a step that keeps killing
  its process fails after a few attempts instead of looping.

The beater exits when the worker's main process does (its parent changes).
It ignores SIGINT and SIGTERM: a warm shutdown keeps the leases of the runs
it waits for.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import signal
import sqlite3
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("dbos_celery")

# the local lease ends this long before the database would let another
# worker take over (worker_timeout after the beat was sent)
LEASE_MARGIN = 0.25

_HEADER = struct.Struct("<qq")  # slots, beats done
_SLOT = struct.Struct("<qqqdq104s")  # seq, state, pid, lease_until, epoch, executor id
_LEASE = struct.Struct("<qqqdq")  # the same without the executor id: a runner's read
_FREE, _CLAIMED = 0, 1


def renewed(until: float, epoch: int, sent: float, worker_timeout: float) -> tuple[float, int]:
    """The lease after a beat sent at ``sent`` committed: the database counts
    the process alive until ``sent + worker_timeout``, so the lease runs
    until a margin before that. A beat sent after the lease had lapsed (the
    process or its beater was paused, or starved) renews it for new runs
    only (the epoch changes): the runs begun before may have been taken
    over meanwhile."""
    if until and sent >= until:
        epoch += 1
    return sent + worker_timeout - LEASE_MARGIN, epoch


def clock() -> float:
    """The lease clock: seconds on a clock shared by the processes of a
    machine that keeps counting while the machine is suspended (a laptop
    lid, a paused VM), so that a lease read after a suspend has lapsed."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else (
        time.monotonic()
    )  # fmt: skip


class LeaseBoard:
    """Slots in shared memory (a file mapped by the worker's processes and
    its beater). Claims, frees and renewals hold a record lock on the file;
    a runner reads its lease without one (a sequence counter detects a read
    that raced a write)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        size = os.fstat(fd).st_size
        self._map = mmap.mmap(fd, size)
        self.slots = _HEADER.unpack_from(self._map, 0)[0]

    @classmethod
    def create(cls, slots: int) -> LeaseBoard:
        """A board of ``slots`` slots in an unlinked temporary file (inherited
        by forked processes, passed to the beater as a descriptor)."""
        import tempfile

        shm = "/dev/shm"
        fd, path = tempfile.mkstemp(prefix="dbos-celery-", dir=shm if os.path.isdir(shm) else None)
        os.unlink(path)
        os.ftruncate(fd, _HEADER.size + slots * _SLOT.size)
        with mmap.mmap(fd, _HEADER.size) as m:
            _HEADER.pack_into(m, 0, slots, 0)
        return cls(fd)

    def close(self) -> None:
        """Close the board's descriptor in this process, once no process of
        it claims a slot any more (a worker that stopped while its process
        goes on). Its memory stays mapped for whoever still holds the board,
        until they let it go."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1  # a later claim fails (EBADF), never locks another file

    # --- header -------------------------------------------------------------

    @property
    def beats(self) -> int:
        """How many rounds the beater has done (0: not started yet)."""
        return int(_HEADER.unpack_from(self._map, 0)[1])

    def count_beat(self) -> None:
        """The beater finished a round (written by the beater alone)."""
        struct.pack_into("<q", self._map, 8, self.beats + 1)

    # --- slots --------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def _offset(self, index: int) -> int:
        return _HEADER.size + index * _SLOT.size

    def _read(self, index: int) -> tuple[int, int, float, int, str]:
        """(state, pid, lease_until, epoch, executor id), consistently."""
        at = self._offset(index)
        while True:
            seq, state, pid, until, epoch, raw = _SLOT.unpack_from(self._map, at)
            if seq % 2 == 0 and _SLOT.unpack_from(self._map, at)[0] == seq:
                return state, pid, until, epoch, raw.rstrip(b"\0").decode()

    def _write(self, index: int, state: int, pid: int, until: float, epoch: int, eid: str) -> None:
        at = self._offset(index)
        seq = _SLOT.unpack_from(self._map, at)[0]
        struct.pack_into("<q", self._map, at, seq + 1)  # odd: being written
        _SLOT.pack_into(self._map, at, seq + 1, state, pid, until, epoch, eid.encode())
        struct.pack_into("<q", self._map, at, seq + 2)

    def claim(self, pid: int, executor_id: str, lease_until: float) -> int | None:
        """A slot for a process that beat at last for a lease until
        ``lease_until``; None when the board is full."""
        if len(executor_id.encode()) > _SLOT.size - 40:
            return None
        with self._locked():
            for index in range(self.slots):
                if self._read(index)[0] == _FREE:
                    self._write(index, _CLAIMED, pid, lease_until, 0, executor_id)
                    return index
        return None

    def free(self, index: int, executor_id: str) -> None:
        with self._locked():
            state, *_, eid = self._read(index)
            if state == _CLAIMED and eid == executor_id:
                self._write(index, _FREE, 0, 0.0, 0, "")

    def lease(self, index: int) -> tuple[float, int]:
        """(lease_until, epoch) of a slot: a read of shared memory (before
        each step: the executor id is not decoded)."""
        at = self._offset(index)
        while True:
            seq, _, _, until, epoch = _LEASE.unpack_from(self._map, at)
            if seq % 2 == 0 and _LEASE.unpack_from(self._map, at)[0] == seq:
                return until, epoch

    def claimed(self) -> list[tuple[int, int, str]]:
        """(slot, pid, executor id) of every claimed slot."""
        found = []
        for index in range(self.slots):
            state, pid, _, _, eid = self._read(index)
            if state == _CLAIMED:
                found.append((index, pid, eid))
        return found

    def renew(self, index: int, executor_id: str, sent: float, worker_timeout: float) -> None:
        """A beat for the slot's process sent at ``sent`` committed (see
        ``renewed``)."""
        with self._locked():
            state, pid, until, epoch, eid = self._read(index)
            if state != _CLAIMED or eid != executor_id:
                return  # freed (and maybe claimed again) since the beat
            self._write(index, state, pid, *renewed(until, epoch, sent, worker_timeout), eid)


# --- the beater process -----------------------------------------------------


def process_state(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) of a live process; None when it is gone.
    Without /proc (not Linux): ("R", "") for any live process, stopped or
    not."""
    if not _PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "R", ""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    state, started = fields[0].decode(), fields[19].decode()
    return None if state in ("Z", "X", "x") else (state, started)


_PROC = os.path.isdir("/proc/self")


class _Database:
    """The beater's one connection, to Postgres or a SQLite file."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.sqlite = config["sqlite"]
        self.conn: Any = None

    def execute(self, statement: str, ids: list[str]) -> None:
        sql, params = self.config[statement]
        values = {**params, "ids": json.dumps(ids) if self.sqlite else ids}
        if self.conn is None:
            self.conn = self._connect()
        try:
            self.conn.execute(sql, values)
        except Exception:
            self.close()
            raise

    def _connect(self) -> Any:
        if self.sqlite:
            conn = sqlite3.connect(self.config["path"], isolation_level=None, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            return conn
        import psycopg

        return psycopg.connect(self.config["conninfo"], autocommit=True, **self.config["bounds"])

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


class Beater:
    """The beater's loop (``run``); ``beat_once`` is one round."""

    def __init__(self, board: LeaseBoard, db: _Database, config: dict[str, Any]) -> None:
        self.board = board
        self.db = db
        self.interval: float = config["heartbeat_interval"]
        self.timeout: float = config["worker_timeout"]
        self.parent: int = config["parent"]
        self._started: dict[str, str] = {}  # executor id -> its process's start time
        self._failing = False

    def beat_once(self) -> None:
        alive: list[tuple[int, str]] = []
        dead: list[tuple[int, str]] = []
        for index, pid, eid in self.board.claimed():
            state = process_state(pid)
            first = self._started.setdefault(eid, state[1] if state else "")
            if state is None or state[1] != first:  # gone (or its pid reused)
                dead.append((index, eid))
            elif state[0] not in ("T", "t"):  # stopped: no beat, its lease lapses
                alive.append((index, eid))
        sent = clock()
        if alive:
            self.db.execute("beat", [eid for _, eid in alive])
            for index, eid in alive:
                self.board.renew(index, eid, sent, self.timeout)
        if dead:
            ids = [eid for _, eid in dead]
            if os.getppid() == self.parent:  # (not the whole worker going down)
                self.db.execute("crashed", ids)  # a step may have killed it
            self.db.execute("dead", ids)
            for index, eid in dead:
                self.board.free(index, eid)
                self._started.pop(eid, None)
                log.info("dbos-celery beater: process of %s is gone; its workflows are "
                         "recovered", eid)  # fmt: skip

    def run(self) -> None:
        while os.getppid() == self.parent:
            began = time.monotonic()
            try:
                self.beat_once()
                if self._failing:
                    self._failing = False
                    log.warning("dbos-celery beater: heartbeats work again")
            except Exception as exc:
                if not self._failing:
                    self._failing = True
                    log.warning("dbos-celery beater: heartbeat failed (%s); retrying", exc)
            self.board.count_beat()
            time.sleep(max(0.0, self.interval - (time.monotonic() - began)))
        self.db.close()


def main() -> None:
    """Run as a script: the configuration (JSON) comes on stdin, the board as
    the descriptor it names."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    config = json.loads(sys.stdin.read())
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/beater] "
                        "%(message)s")  # fmt: skip
    board = LeaseBoard(config["board_fd"])
    Beater(board, _Database(config), config).run()


if __name__ == "__main__":
    main()
