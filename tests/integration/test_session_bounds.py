"""Nothing cluster-wide can be held for long by a frozen process: the
library's Postgres sessions end a transaction left idle (a SIGSTOPped or
partitioned holder) within a bounded time, releasing the sweep's lock."""

from __future__ import annotations

import threading
import time

from celery import Celery

from dbos_celery import Durable
from dbos_celery.keys import sweep_lock
from dbos_celery.store import workers
from tests.support import Env


def test_a_frozen_holder_of_the_sweep_lock_blocks_sweeps_only_for_a_bounded_time(
    env: Env,
) -> None:
    frozen = Durable(Celery("frozen"), env.database_url, schema=env.schema)
    other = Durable(Celery("other"), env.database_url, schema=env.schema)
    frozen.migrate()
    took = threading.Event()
    ended: list[BaseException] = []
    woke: list[float] = []

    def hold() -> None:
        # the sweep's lock taken in one of the library's sessions, then
        # nothing more: what a process frozen mid-sweep leaves behind
        try:
            with frozen.services.store.begin() as ex:
                lock = ex.first(workers._SWEEP_LOCK, {"lock": sweep_lock(env.schema)})
                assert lock[0]
                took.set()
                time.sleep(8)  # longer than the bound (workers.SWEEP_IDLE: 2 s)
                woke.append(time.monotonic())
                ex.first(workers._SWEEP_LOCK, {"lock": sweep_lock(env.schema)})
        except BaseException as exc:  # the server ended the idle session
            ended.append(exc)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert took.wait(10)
        assert other.sweep() == [] and _blocked(other, env)  # held: that pass skipped
        began = time.monotonic()
        while _blocked(other, env):
            time.sleep(0.2)
        free_at = time.monotonic()
        holder.join(15)
        # freed by the server while the holder was still frozen, not by the
        # holder's own commit when it woke up; and its session was ended
        assert woke and free_at < woke[0], (free_at - began, woke)
        assert ended, "the idle session was not ended"
        print(f"a frozen holder blocked the sweep for {free_at - began:.1f} s")
    finally:
        frozen.close()
        other.close()


def _blocked(d: Durable, env: Env) -> bool:
    s = d.services.settings
    got = d.services.store.run(
        workers.sweep, env.schema, s.worker_timeout, s.max_recovery_attempts, s.enqueued_timeout
    )
    return got is None
