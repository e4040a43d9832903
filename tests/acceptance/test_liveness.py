"""Liveness that user code cannot break: a step that holds the GIL (one
long C call) stops every thread of its process, yet the process is alive
and its workflow is never taken over; the worker's beater, a process of its
own, heartbeats for it. A process that is gone is still recovered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.apps.core import build
from tests.support import Env, WorkerProcess, app_fixture, start_worker, wait_for

ns = app_fixture(build)

RESULT = ["before", "held", "after"]


def _ran_once(env: Env, wid: str, *logs: WorkerProcess) -> None:
    assert env.ledger(wid).count("gil") == 1, env.ledger(wid)
    assert env.ledger(wid).count("after") == 1, env.ledger(wid)
    for w in logs:
        assert "recovering workflow" not in w.log_path.read_text(), w.describe()


@pytest.mark.parametrize("layout", ["two -c 1", "one -c 2"])
def test_gil_holding_step_on_prefork_runs_once(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace, layout: str
) -> None:
    if layout == "two -c 1":
        started = [start_worker(env, workers, name=n, concurrency=1) for n in ("a", "b")]
    else:
        started = [start_worker(env, workers, name="a", concurrency=2)]
    handle = ns.gil_heavy.start(4, workflow_id="gil")
    assert handle.result(timeout=60) == RESULT
    _ran_once(env, "gil", *started)


def test_gil_holding_step_on_threads_runs_once(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    started = [start_worker(env, workers, name=n, concurrency=2, pool="threads") for n in "ab"]
    handle = ns.gil_heavy.start(4, workflow_id="gil")
    assert handle.result(timeout=60) == RESULT
    _ran_once(env, "gil", *started)


@pytest.mark.slow
def test_step_holding_the_gil_for_30_seconds_is_not_taken_over(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    started = [start_worker(env, workers, name=n, concurrency=1) for n in ("a", "b")]
    threads = start_worker(env, workers, name="t", concurrency=2, pool="threads")
    one = ns.gil_heavy.start(30, workflow_id="gil")
    assert one.result(timeout=90) == RESULT
    _ran_once(env, "gil", *started, threads)


def test_a_killed_pool_process_is_recovered_while_its_worker_lives(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """The OOM killer takes one child: its beater sees it gone and marks it
    dead at once; the workflow is recovered and its step runs again once."""
    w = start_worker(env, workers, name="a", concurrency=2)
    handle = ns.five_steps.start(gate_step=3, workflow_id="oom")
    wait_for(lambda: "step3" in env.ledger("oom"), 20, w.describe)
    child = _runner_pid(env, "oom")
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: "is gone; its workflows are recovered" in w.log_path.read_text(), 20,
             w.describe)  # fmt: skip
    wait_for(lambda: env.ledger("oom").count("step3") == 2, 20, w.describe)
    from tests.apps.core import open_gate

    open_gate(env.schema, "oom", "step3")
    assert handle.result(timeout=30) == [f"step{i}" for i in range(1, 6)]
    assert env.ledger("oom").count("step2") == 1, env.ledger("oom")


def _runner_pid(env: Env, wid: str) -> int:
    rows = env.sql(
        "SELECT w.pid FROM {schema}.workflows f JOIN {schema}.workers w "
        "ON w.id = f.executor_id WHERE f.id = %s",
        wid,
    )
    return int(rows[0][0])


@pytest.mark.parametrize(
    "n", [pytest.param(10, id="10 workflows"), pytest.param(50, marks=pytest.mark.slow, id="50")]
)
def test_cpu_starvation_causes_no_false_takeover(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace, n: int
) -> None:
    """Four busy loops on this machine's cores while workflows of five steps
    run on two workers: slow, but no process is taken for dead."""
    started = [start_worker(env, workers, name="a", concurrency=2),
               start_worker(env, workers, name="b", concurrency=1)]  # fmt: skip
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        handles = [ns.five_steps.start(workflow_id=f"cpu-{i}") for i in range(n)]
        for h in handles:
            assert h.result(timeout=120) == [f"step{i}" for i in range(1, 6)]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert len(env.ledger()) == 5 * n, env.ledger()  # every step body ran once
    for w in started:
        assert "recovering workflow" not in w.log_path.read_text(), w.describe()
        assert "lease lapsed" not in w.log_path.read_text(), w.describe()
