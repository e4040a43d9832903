"""Slots on demand: a waiting workflow gives its Celery slot back at once
when the worker wants it (requests wait for a slot, or the worker shuts
down), not only after ``park_after``; real `celery worker` processes."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from tests.apps.park import build
from tests.support import Env, WorkerProcess, app_fixture, start_worker, wait_for

ns = app_fixture(build)

APP = "tests.apps.park"


def _statuses(env: Env, prefix: str) -> dict[str, int]:
    rows = env.sql(
        "SELECT status, count(*) FROM {schema}.workflows WHERE id LIKE %s GROUP BY status",
        prefix + "%",
    )
    return {r[0]: int(r[1]) for r in rows}


def _backlog_parks(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace, n: int, pool: str
) -> None:
    # park_after 30: without slots on demand, two slots would hold each wait
    # 30 s, and n waits would take n * 15 s to start
    w = start_worker(env, workers, "tests.apps.park", name="w", pool=pool, concurrency=2,
                     extra_env={"DBOS_TEST_PARK_AFTER": "30"})  # fmt: skip
    began = time.monotonic()
    handles = [ns.quiet.start("go", 600.0, workflow_id=f"b-{i}") for i in range(n)]
    # every one has been started and waits (parked); the last ones, with no
    # request left behind them, may still hold the two slots in-process
    wait_for(lambda: _statuses(env, "b-").get("WAITING", 0) >= n - 2, 30 + n / 10, w.describe)
    print(f"{n} waits on two {pool} slots: started and parked in {time.monotonic() - began:.1f} s")
    for i in range(n):
        ns.durable.send(f"b-{i}", i, "go")
    assert [h.result(timeout=60) for h in handles] == list(range(n))
    assert env.sql("SELECT max(recovery_attempts) FROM {schema}.workflows") == [(0,)]


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_waits_park_at_once_while_requests_wait_for_a_slot(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace, pool: str
) -> None:
    """40 workflows waiting in recv(timeout=600) on a worker with two slots
    and park_after=30: each parks as soon as it waits, because requests wait
    for its slot, so all of them start within seconds."""
    _backlog_parks(env, workers, ns, 40, pool)


@pytest.mark.slow
def test_five_hundred_waits_on_two_slots_all_start(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    _backlog_parks(env, workers, ns, 500, "prefork")


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_warm_shutdown_parks_waits_and_another_worker_finishes_them(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace, pool: str
) -> None:
    """A worker running 4 workflows that wait in recv in-process (park_after
    60) gets SIGTERM, as in a deploy: the waits park at once, the worker
    exits without waiting for park_after, and another worker finishes them
    when their messages come; each ran its step once."""
    extra = {"DBOS_TEST_PARK_AFTER": "60"}
    first = start_worker(env, workers, APP, name="old", pool=pool, concurrency=4,
                         extra_env=extra)  # fmt: skip
    handles = [ns.waits.start("go", 600.0, workflow_id=f"d-{i}") for i in range(4)]
    waiting = "SELECT count(*) FROM {schema}.steps WHERE name = 'durable.deadline'"
    wait_for(lambda: env.sql(waiting) == [(4,)], 30, first.describe)
    assert _statuses(env, "d-") == {"PENDING": 4}  # held in-process, not parked

    began = time.monotonic()
    first.proc.terminate()  # SIGTERM: Celery's warm shutdown
    wait_for(lambda: first.proc.poll() is not None, 20, first.describe)
    took = time.monotonic() - began
    assert _statuses(env, "d-") == {"WAITING": 4}, first.describe()

    start_worker(env, workers, APP, name="new", pool=pool, concurrency=4, extra_env=extra)
    for i in range(4):
        ns.durable.send(f"d-{i}", i, "go")
    assert [h.result(timeout=30) for h in handles] == [0, 1, 2, 3]
    for i in range(4):
        assert env.ledger(f"d-{i}").count(f"got {i}") == 1
    print(f"warm shutdown with 4 waits ({pool}) took {took:.2f} s")
