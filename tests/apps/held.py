"""The app of the deferred-checkpoint tests: the checkpoint of a step with
``defer_checkpoint=True`` is written with the workflow's next durable write,
or before the next step body runs or the workflow waits
(``dbos_celery/checkpoint.py``). Steps write the test's
ledger; gates (``tests.support.wait_gate``) stop a workflow at a known point:
inside a step, or in the workflow's own code between durable operations."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from tests.support import app_from_env, wait_gate, write_ledger


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    ns = app_from_env("held", env, **durable_options)
    durable, schema = ns.durable, ns.schema

    @durable.step(name="held.effect", defer_checkpoint=True)
    def effect(wid: str, what: str, gate: bool = False) -> str:
        write_ledger(schema, wid, what)
        if gate:
            wait_gate(schema, wid, what)
        return what

    @durable.step(name="held.plain")
    def plain(wid: str, what: str) -> str:
        write_ledger(schema, wid, what)
        return what

    @durable.workflow(name="held.one_step")
    def one_step() -> str:
        return effect(durable.workflow_id, "a")

    @durable.workflow(name="held.one_plain_step")
    def one_plain_step() -> str:
        return plain(durable.workflow_id, "a")

    @durable.workflow(name="held.gate_in_code")
    def gate_in_code() -> str:
        """Step a, then a gate in the workflow's own code: a is held there."""
        a = effect(durable.workflow_id, "a")
        write_ledger(schema, durable.workflow_id, "returned")  # not a step: every run
        wait_gate(schema, durable.workflow_id, "code")
        return a + "!"

    @durable.workflow(name="held.two_steps")
    def two_steps(gate: bool = True) -> list[str]:
        """Step a, then step b (with a gate in its body)."""
        return [effect(durable.workflow_id, "a"), effect(durable.workflow_id, "b", gate=gate)]

    @durable.workflow(name="held.step_then_wait")
    def step_then_wait(other: str) -> list[Any]:
        """Step a, then wait for another workflow's result (no timeout, so
        nothing is written when the wait begins)."""
        return [effect(durable.workflow_id, "a"), durable.retrieve(other).result()]

    @durable.workflow(name="held.step_then_send")
    def step_then_send(destination: str) -> str:
        a = effect(durable.workflow_id, "a")
        durable.send(destination, a, "t")
        return a

    ns.__dict__.update(effect=effect, one_step=one_step, one_plain_step=one_plain_step,
                       gate_in_code=gate_in_code, two_steps=two_steps,
                       step_then_wait=step_then_wait, step_then_send=step_then_send)  # fmt: skip
    return ns


# the worker subprocess: `celery -A tests.apps.held worker`
if os.environ.get("DBOS_TEST_SCHEMA"):
    _ns = build()
    app = _ns.app
    durable = _ns.durable
