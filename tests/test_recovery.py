"""Crash recovery with real worker processes killed by SIGKILL."""

from __future__ import annotations

from collections import Counter

from tests.apps.core import build
from tests.support import Env, WorkerProcess, wait_for


def _checkpoints(env: Env, workflow_id: str) -> int:
    return env.sql("SELECT count(*) FROM {schema}.steps WHERE workflow_id = %s", workflow_id)[0][0]


def test_step_committed_before_kill_never_reruns(env: Env, workers: list[WorkerProcess]) -> None:
    ns = build(env.vars())
    first = WorkerProcess(env, name="first")
    workers.append(first)
    first.wait_ready()
    handle = ns.five_steps.start(4, 30.0, workflow_id="replay-1")
    # step 4 holds for 30 s: kill while it runs, after steps 1-3 committed
    wait_for(lambda: "step4" in env.ledger("replay-1"), 20, first.describe)
    assert _checkpoints(env, "replay-1") == 3
    first.kill()

    second = WorkerProcess(env, name="second")
    workers.append(second)
    second.wait_ready()
    # step 4 runs again (interrupted before its checkpoint) and holds again;
    # the replay must not have re-run steps 1-3
    wait_for(lambda: env.ledger("replay-1").count("step4") == 2, 20, second.describe)
    counts = Counter(env.ledger("replay-1"))
    assert counts["step1"] == counts["step2"] == counts["step3"] == 1
    assert handle.status().status == "PENDING"
    assert handle.status().recovery_attempts == 1
