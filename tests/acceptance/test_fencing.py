"""Fencing: a runner paused past its lease (SIGSTOP: a VM freeze, a long GC)
while another worker took its workflow over starts no further step body
when it resumes; it checks its local lease, without a round trip."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

from tests.apps.core import build
from tests.support import Env, WorkerProcess, app_fixture, start_worker, wait_for

ns = app_fixture(build)


def test_runner_paused_between_steps_starts_no_step_after_a_takeover(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    first = start_worker(env, workers, name="first", concurrency=1)
    handle = ns.between.start(3.0, workflow_id="paused")
    wait_for(lambda: "between" in env.ledger("paused"), 20, first.describe)
    os.killpg(first.proc.pid, signal.SIGSTOP)  # in plain code between the two steps
    try:
        second = start_worker(env, workers, name="second", concurrency=1)
        # the second worker takes it over (the first stopped heartbeating)
        assert handle.result(timeout=30) == ["step1", "step2"], second.describe()
    finally:
        os.killpg(first.proc.pid, signal.SIGCONT)
    # the first runner wakes from its sleep and reaches step2, which the
    # second has committed: its lease lapsed, so it must not run the body
    # (either way its run ends and is handed back)
    stopped = "paused: checkpoint conflict; replaying from its checkpoints"
    wait_for(lambda: stopped in first.log_path.read_text(), 20, first.describe)
    assert env.ledger("paused").count("step2") == 1, env.ledger("paused")
    assert env.ledger("paused").count("step1") == 1
    assert "lease lapsed" in first.log_path.read_text()


def test_runner_paused_inside_a_step_keeps_no_checkpoint_and_starts_nothing_after(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """The one case fencing cannot prevent: a pause inside a running step
    body. The body goes on when the process resumes, but its checkpoint is
    refused and it starts no later step."""
    first = start_worker(env, workers, name="first", concurrency=1)
    handle = ns.five_steps.start(2, 3.0, workflow_id="mid")  # step2 sleeps 3 s
    wait_for(lambda: "step2" in env.ledger("mid"), 20, first.describe)
    os.killpg(first.proc.pid, signal.SIGSTOP)  # inside step2's body
    try:
        second = start_worker(env, workers, name="second", concurrency=1)
        assert handle.result(timeout=30) == [f"step{i}" for i in range(1, 6)], second.describe()
    finally:
        os.killpg(first.proc.pid, signal.SIGCONT)
    stopped = "mid: checkpoint conflict; replaying from its checkpoints"
    wait_for(lambda: stopped in first.log_path.read_text(), 20, first.describe)
    ledger = env.ledger("mid")
    assert ledger.count("step2") == 2, ledger  # the paused body, and the new runner's
    assert [ledger.count(f"step{i}") for i in (1, 3, 4, 5)] == [1, 1, 1, 1], ledger
