"""Parking in durable.call / durable.gather and in a child's result():
the waiting workflow frees its Celery worker slot (its row becomes WAITING)
and is published again when the call outcomes are written, the child
finishes, a re-dispatch check is due, or the wait's durable deadline passes;
real `celery worker` processes.

Each run of a ``pc.*`` workflow writes "start" and "end" to the ledger (see
tests/apps/parkcalls.py). Several tests run the workers with a recovery
sweep of an hour (``DBOS_TEST_SWEEP_INTERVAL``): then only the direct wakeups
(outcome written, child finished, message sent, the park's own re-check)
can wake a parked workflow, and a lost wakeup hangs the test. Such workers
also get ``call_redispatch_after`` above the sweep interval, else a call
wait (whose re-dispatch check would come before the sweep) never parks.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from dbos_celery.keys import key
from tests.apps.parkcalls import build
from tests.support import (
    Env,
    WorkerProcess,
    app_fixture,
    max_overlap,
    open_gate,
    start_worker,
    wait_for,
)

ns = app_fixture(build)

APP = "tests.apps.parkcalls"
NO_SWEEP = {"DBOS_TEST_SWEEP_INTERVAL": "3600", "DBOS_TEST_CALL_REDISPATCH_AFTER": "7200"}


def _start(
    env: Env,
    workers: list[WorkerProcess],
    name: str,
    park_after: str = "0",
    tasks: bool = False,
    concurrency: int = 2,
    extra: dict[str, str] | None = None,
) -> WorkerProcess:
    """A workflow worker (or, with ``tasks``, a worker of the tasks queue)."""
    extra_env = {"DBOS_TEST_PARK_AFTER": park_after, **(extra or {})}
    queues = f"{env.queue}_tasks" if tasks else None
    return start_worker(
        env, workers, APP, name=name, extra_env=extra_env, queues=queues, concurrency=concurrency
    )


def _statuses(env: Env) -> dict[str, int]:
    rows = env.sql("SELECT status, count(*) FROM {schema}.workflows GROUP BY status")
    return {r[0]: int(r[1]) for r in rows}


def _runs(env: Env) -> dict[str, int]:
    """Runs (ledger "start") per workflow id."""
    rows = env.sql(
        "SELECT workflow_id, count(*) FROM {schema}.ledger WHERE what = 'start' "
        "GROUP BY workflow_id"
    )
    return {r[0]: int(r[1]) for r in rows}


def _task_runs(env: Env) -> dict[tuple[str, str], int]:
    rows = env.sql(
        "SELECT workflow_id, what, count(*) FROM {schema}.ledger WHERE what LIKE 'task %%' "
        "GROUP BY workflow_id, what"
    )
    return {(r[0], r[1]): int(r[2]) for r in rows}


def test_two_slots_hold_many_workflows_parked_in_calls_gathers_and_results(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """60 workflows in durable.call, 20 in a gather of 3 and 30 parents in a
    child's result() (their 30 children in recv) wait at once on a workflow
    worker with concurrency 2, none holding a slot. A tasks worker started
    later runs the 120 tasks; each outcome wakes its caller (a gather only
    once all 3 are written: every workflow runs exactly twice), and the
    children's finish wakes the parents. Never more than 2 runs overlap;
    every task runs once. No sweep helps (an hour)."""
    w = _start(env, workers, "w", extra=NO_SWEEP)
    calls = {f"c-{i}": ns.call.start(f"c{i}", workflow_id=f"c-{i}") for i in range(60)}
    gathers = {f"g-{i}": ns.gather.start(3, workflow_id=f"g-{i}") for i in range(20)}
    parents = {f"p-{i}": ns.parent.start("t", workflow_id=f"p-{i}") for i in range(30)}
    total = 60 + 20 + 30 + 30
    wait_for(lambda: _statuses(env).get("WAITING") == total, 90, w.describe)
    held = "SELECT count(*) FROM {schema}.workflows WHERE executor_id IS NOT NULL"
    assert env.sql(held) == [(0,)]
    waiting_for = dict(env.sql("SELECT id, waiting_for FROM {schema}.workflows"))
    assert waiting_for["c-0"] == key("t", "c-0")
    assert waiting_for["g-0"] == key("t", "g-0")
    assert waiting_for["p-0"] == key("d", "p-0-0")

    t = _start(env, workers, "t", tasks=True, extra=NO_SWEEP)
    for i in range(30):
        ns.durable.send(f"p-{i}-0", i, "t")
    wait_for(lambda: _statuses(env) == {"SUCCESS": total}, 90, lambda: w.describe() + t.describe())
    assert {k: h.result(timeout=5) for k, h in calls.items()} == {
        f"c-{i}": f"C{i}" for i in range(60)
    }
    assert all(h.result(timeout=5) == ["G0", "G1", "G2"] for h in gathers.values())
    assert {k: h.result(timeout=5) for k, h in parents.items()} == {f"p-{i}": i for i in range(30)}
    assert max_overlap(env) <= 2
    assert set(_runs(env).values()) == {2}  # parked once, woken once
    assert len(_runs(env)) == total
    assert set(_task_runs(env).values()) == {1}
    assert len(_task_runs(env)) == 60 + 20 * 3
    assert env.sql("SELECT max(recovery_attempts) FROM {schema}.workflows") == [(0,)]


def test_call_outcomes_racing_the_park_wake_every_workflow(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """150 workflows (calls and gathers of 2) park 0.05 s after their
    dispatch while a busy tasks worker writes their outcomes: before, during
    or after each park. With no sweep (an hour), every one completes, so
    the outcome's wake or the park's own re-check woke each parked one;
    every task ran once. (Without the re-check, an outcome committed
    between the park's read and its commit wakes nothing: 2-3 of ~87 parks
    per run here, left to the sweep.)"""
    w = _start(env, workers, "w", park_after="0.05", extra=NO_SWEEP)
    t = _start(env, workers, "t", tasks=True, concurrency=6, extra=NO_SWEEP)
    handles = {}
    for i in range(150):
        wid = f"r-{i}"
        seconds = (i % 11) * 0.01  # outcomes land before, at and after the park
        handles[wid] = (
            ns.gather.start(2, seconds, workflow_id=wid)
            if i % 3 == 0
            else ns.call.start(f"r{i}", seconds=seconds, workflow_id=wid)
        )
    wait_for(lambda: _statuses(env) == {"SUCCESS": 150}, 60, lambda: w.describe() + t.describe())
    for wid, h in handles.items():
        i = int(wid.split("-")[1])
        assert h.result(timeout=5) == (["G0", "G1"] if i % 3 == 0 else f"R{i}")
    assert set(_task_runs(env).values()) == {1}
    assert max_overlap(env) <= 2
    parked = sum(1 for n in _runs(env).values() if n > 1)
    print(f"{parked} of 150 workflows parked at least once")


def test_parked_calls_survive_a_killed_workflow_worker(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """Workflows parked in calls, gathers and child results; their worker
    is SIGKILLed. The tasks then run and the children get their messages
    while no workflow worker runs (the wakes publish to the broker); a new
    workflow worker completes every one, each task having run once."""
    w1 = _start(env, workers, "w1")
    calls = [ns.call.start(f"k{i}", workflow_id=f"k-{i}") for i in range(20)]
    gathers = [ns.gather.start(3, workflow_id=f"kg-{i}") for i in range(5)]
    parents = [ns.parent.start("t", workflow_id=f"kp-{i}") for i in range(10)]
    total = 20 + 5 + 20
    wait_for(lambda: _statuses(env).get("WAITING") == total, 60, w1.describe)
    w1.kill()
    t = _start(env, workers, "t", tasks=True)
    for i in range(10):
        ns.durable.send(f"kp-{i}-0", i, "t")
    wait_for(lambda: len(_task_runs(env)) == 20 + 15, 60, t.describe)
    w2 = _start(env, workers, "w2")
    assert [h.result(timeout=60) for h in calls] == [f"K{i}" for i in range(20)], w2.describe()
    assert [h.result(timeout=30) for h in gathers] == [["G0", "G1", "G2"]] * 5
    assert [h.result(timeout=30) for h in parents] == list(range(10))
    assert set(_task_runs(env).values()) == {1}


def test_parked_call_whose_task_worker_died_is_sent_again(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """Four workflows park in a call of a task that blocks; the tasks
    worker (2 slots) starts two and prefetches the rest, then is SIGKILLed.
    The parked workflows wake for their re-dispatch check (within
    call_redispatch_after = 2 s), see the dead worker or the task not
    started, and send the tasks again (same ids); a new tasks worker runs
    them and every workflow completes."""
    fast = {"DBOS_TEST_CALL_REDISPATCH_AFTER": "2"}
    w = _start(env, workers, "w", extra=fast)
    t1 = _start(env, workers, "t1", tasks=True, extra=fast)
    handles = [ns.call.start(f"h{i}", True, workflow_id=f"h-{i}") for i in range(4)]
    wait_for(lambda: len(_task_runs(env)) == 2, 30, t1.describe)
    wait_for(lambda: _statuses(env).get("WAITING") == 4, 30, w.describe)
    t1.kill()
    open_gate(env.schema, "all", "held")
    _start(env, workers, "t2", tasks=True, extra=fast)
    assert [h.result(timeout=60) for h in handles] == [f"H{i}" for i in range(4)], w.describe()
    assert "sending it again" in w.log_path.read_text()
    assert all(n >= 2 for n in _runs(env).values())  # each parked at least once


def _checkpoint(env: Env, workflow_id: str, name: str, column: str) -> str | None:
    rows = env.sql(
        f"SELECT {column} FROM {{schema}}.steps WHERE workflow_id = %s AND name = %s",
        workflow_id,
        name,
    )
    return bytes(rows[0][0]).decode() if rows and rows[0][0] is not None else None


def _deadline_of(env: Env, workflow_id: str) -> float | None:
    """The checkpointed deadline of a result(timeout) (JSON: epoch seconds)."""
    got = _checkpoint(env, workflow_id, "durable.deadline", "output")
    return None if got is None else float(got)


def _result_error(env: Env, workflow_id: str) -> str | None:
    return _checkpoint(env, workflow_id, "durable.result", "error")


def test_child_result_timeout_is_durable_across_a_kill(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A parent waits in-process (no parking) for its child with a 600 s
    timeout; its deadline is checkpointed. The worker is SIGKILLed and,
    while none runs, the test moves the checkpointed deadline to 1 s from
    now: the recovered parent times out at that deadline (a fresh 600 s
    timeout would hang the test), records the ResultTimeoutError, and its
    child goes on running."""
    w1 = _start(env, workers, "w1", park_after="none")
    parent = ns.parent.start("t", 600.0, workflow_id="tp")
    wait_for(lambda: _deadline_of(env, "tp") is not None, 30, w1.describe)
    w1.kill()
    soon = ns.durable.services.codec.dumps(time.time() + 1.0)
    env.sql(
        "UPDATE {schema}.steps SET output = %s WHERE workflow_id = 'tp' "
        "AND name = 'durable.deadline'",
        soon,
    )
    w2 = _start(env, workers, "w2", park_after="none")
    assert parent.result(timeout=30) == "timeout", w2.describe()
    assert "ResultTimeoutError" in (_result_error(env, "tp") or "")
    assert env.ledger("tp") == ["start", "start", "end"]  # killed, then replayed
    assert ns.durable.retrieve("tp-0").status().status in ("PENDING", "ENQUEUED")


def test_parked_child_result_wakes_at_its_checkpointed_deadline(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A parent parks in its child's result(timeout=3): WAITING on the
    child's outcome with wake_at = the checkpointed deadline. Its worker is
    SIGKILLed; the deadline passes with no worker running; a new worker's
    sweep wakes it and the replay times out at once (nothing new recorded
    for the deadline), while the parked child stays parked."""
    w1 = _start(env, workers, "w1")
    parent = ns.parent.start("t", 3.0, workflow_id="pp")
    wait_for(lambda: _statuses(env).get("WAITING") == 2, 30, w1.describe)
    deadline = _deadline_of(env, "pp")
    assert deadline is not None
    rows = env.sql(
        "SELECT waiting_for, extract(epoch FROM wake_at) FROM {schema}.workflows WHERE id = 'pp'"
    )
    assert rows[0][0] == key("d", "pp-0")
    assert float(rows[0][1]) == pytest.approx(deadline, abs=1e-3)
    w1.kill()
    wait_for(lambda: time.time() > deadline + 0.5, 10)
    w2 = _start(env, workers, "w2")
    assert parent.result(timeout=30) == "timeout", w2.describe()
    assert _deadline_of(env, "pp") == deadline
    assert "ResultTimeoutError" in (_result_error(env, "pp") or "")
    assert ns.durable.retrieve("pp-0").status().status == "WAITING"
