"""The checkpoint of a step with ``defer_checkpoint=True`` is held and
written with the workflow's next durable write (saving a commit), at the
latest before the next step body runs or the workflow waits. What that costs
and what it keeps, with real workers killed by SIGKILL: a step whose
checkpoint was still held runs again (at-least-once, as before a commit),
one followed by another step or a wait never does; a lost answer to the
final commit that carried a held checkpoint costs nothing."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from tests.apps.held import build
from tests.proxy import DropReplyProxy
from tests.support import Env, WorkerProcess, app_fixture, open_gate, start_worker, wait_for

APP = "tests.apps.held"
ns = app_fixture(build)


def _checkpoints(env: Env, workflow_id: str) -> list[str]:
    rows = env.sql("SELECT name FROM {schema}.steps WHERE workflow_id = %s ORDER BY seq",
                   workflow_id)  # fmt: skip
    return [r[0] for r in rows]


def _runs(env: Env, workflow_id: str) -> Counter[str]:
    return Counter(w for w in env.ledger(workflow_id) if not w.startswith("open:"))


def test_a_kill_reruns_only_a_step_whose_checkpoint_was_still_held(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    first = start_worker(env, workers, APP, name="first", concurrency=3)  # one each
    code = ns.gate_in_code.start(workflow_id="code")
    steps = ns.two_steps.start(workflow_id="steps")
    waits = ns.step_then_wait.start("code", workflow_id="waits")
    # each workflow at a known point, then one kill of the whole worker
    wait_for(lambda: "returned" in env.ledger("code"), 20, first.describe)
    wait_for(lambda: "b" in env.ledger("steps"), 20, first.describe)
    wait_for(lambda: _checkpoints(env, "waits"), 20, first.describe)
    # a returned, but the workflow's own code runs on: its checkpoint is held
    assert _checkpoints(env, "code") == []
    # written before the next step's body ran, and before the recv waited
    assert _checkpoints(env, "steps") == ["held.effect"]
    assert _checkpoints(env, "waits") == ["held.effect"]
    first.kill()

    second = start_worker(env, workers, APP, name="second")
    open_gate(env.schema, "code", "code")
    open_gate(env.schema, "steps", "b")
    assert code.result(timeout=30) == "a!", second.describe()
    assert steps.result(timeout=30) == ["a", "b"]
    assert waits.result(timeout=30) == ["a", "a!"]
    assert _runs(env, "code") == {"a": 2, "returned": 2}  # held at the kill: again
    assert _runs(env, "steps") == {"a": 1, "b": 2}  # b was running: again
    assert _runs(env, "waits") == {"a": 1}
    assert _checkpoints(env, "code") == ["held.effect"]


def test_a_lost_answer_to_the_final_commit_with_a_held_checkpoint_costs_nothing(
    env: Env, workers: list[WorkerProcess], proxy: DropReplyProxy, ns: SimpleNamespace
) -> None:
    """The worker's final statement (status + the held step checkpoint)
    commits, its answer is lost; the retry finds the status final, so its
    lease check writes nothing again: the run ends quietly, the step ran
    once."""
    w = start_worker(env, workers, APP,
                     extra_env={"DBOS_TEST_DATABASE_URL": proxy.url(env.database_url)})  # fmt: skip
    proxy.arm(b"UPDATE 1", b"held_step")
    handle = ns.one_step.start(workflow_id="lost")
    assert handle.result(timeout=30) == "a", w.describe()
    assert proxy.dropped == 1, w.describe()
    assert _runs(env, "lost") == {"a": 1}
    assert _checkpoints(env, "lost") == ["held.effect"]
    wait_for(lambda: "succeeded" in w.log_path.read_text(), 10, w.describe)  # the task ended
    assert "Traceback" not in w.describe()
