"""The app that core tests run in real `celery worker` processes.

``build()`` makes a fresh app + Durable bound to one test's schema and queue;
the worker subprocess builds it from the environment (module-level ``app``).
Steps record their side effects in the test's ledger table.

Gates: a step called with ``gate=True`` records itself in the ledger, then
waits until the test opens the gate (``open_gate``), so a test can kill a
worker at a known point, or let a workflow finish, without timing guesses.
"""

from __future__ import annotations

import ctypes
import os
import time
from types import SimpleNamespace
from typing import Any

from dbos_celery import MaxStepAttemptsError
from tests.support import app_from_env, ledger_count, open_gate, wait_gate, write_ledger

__all__ = ["OrderRejected", "build", "ledger_count", "open_gate"]


class OrderRejected(Exception):
    """A user exception type: recorded failures must come back as this type."""


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    ns = app_from_env("core", env, **durable_options)
    durable, schema = ns.durable, ns.schema

    def ledger_for(workflow_id: str, what: str) -> None:
        write_ledger(schema, workflow_id, what)

    @durable.step(name="core.side_effect")
    def side_effect(workflow_id: str, what: str, hold: float = 0.0, gate: bool = False) -> str:
        ledger_for(workflow_id, what)
        if hold:
            time.sleep(hold)
        if gate:
            wait_gate(schema, workflow_id, what)
        return what

    @durable.workflow(name="core.five_steps")
    def five_steps(hold_step: int = 0, hold: float = 0.0, gate_step: int = 0) -> list[str]:
        wid = durable.workflow_id
        out = []
        for i in range(1, 6):
            out.append(
                side_effect(wid, f"step{i}", hold if i == hold_step else 0.0, i == gate_step)
            )
        return out

    attempts: dict[str, int] = {}

    @durable.step(name="core.flaky", max_attempts=4, interval=0.1, backoff=3.0)
    def flaky(workflow_id: str, failures: int) -> int:
        n = attempts.get(workflow_id, 0) + 1
        attempts[workflow_id] = n
        ledger_for(workflow_id, f"attempt{n}")
        if n <= failures:
            raise ConnectionError(f"attempt {n} failed")
        return n

    @durable.workflow(name="core.retrying")
    def retrying(failures: int) -> int:
        return flaky(durable.workflow_id, failures)

    @durable.step(name="core.always_fails", max_attempts=3, interval=0.02, backoff=1.0)
    def always_fails(workflow_id: str) -> None:
        ledger_for(workflow_id, "always_fails")
        raise ConnectionError("the service is down")

    @durable.workflow(name="core.exhausts")
    def exhausts() -> None:
        always_fails(durable.workflow_id)

    @durable.step(name="core.boom")
    def boom(workflow_id: str) -> None:
        ledger_for(workflow_id, "boom")
        raise KeyError("no such order")

    @durable.workflow(name="core.errors_then_gate")
    def errors_then_gate() -> list[str]:
        """Catches two recorded step failures, then waits at a gate."""
        wid = durable.workflow_id
        caught = []
        try:
            boom(wid)
        except KeyError as exc:
            caught.append(f"KeyError:{exc.args[0]}")
        try:
            always_fails(wid)
        except MaxStepAttemptsError as exc:
            caught.append(f"MaxStepAttemptsError:{exc.args[0]}:{exc.args[1]}")
        side_effect(wid, "after", gate=True)
        return caught

    @durable.step(name="core.branch_a")
    def branch_a(workflow_id: str) -> str:
        ledger_for(workflow_id, "branch_a")
        return "a"

    @durable.step(name="core.branch_b")
    def branch_b(workflow_id: str) -> str:
        ledger_for(workflow_id, "branch_b")
        return "b"

    @durable.workflow(name="core.branching")
    def branching() -> str:
        """Not deterministic on purpose: the branch depends on a read made
        outside any step (a 'flip' row in the ledger)."""
        wid = durable.workflow_id
        chosen = branch_b(wid) if ledger_count(schema, wid, "flip") else branch_a(wid)
        side_effect(wid, "wait", gate=True)
        return chosen

    @durable.workflow(name="core.rejects")
    def rejects(order_id: str) -> None:
        raise OrderRejected(order_id)

    @durable.workflow(name="core.echo")
    def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": list(args), "kwargs": kwargs}

    @durable.workflow(name="core.between")
    def between(pause: float) -> list[str]:
        """Two steps with plain workflow code between them: ``between`` is
        written to the ledger by every run, then it sleeps ``pause``."""
        wid = durable.workflow_id
        first = side_effect(wid, "step1")
        ledger_for(wid, "between")
        time.sleep(pause)
        return [first, side_effect(wid, "step2")]

    @durable.step(name="core.hold_gil")
    def hold_gil(workflow_id: str, seconds: int) -> str:
        """One C call that holds the GIL for ``seconds``: libc's sleep through
        ctypes.PyDLL, which (unlike CDLL) does not release it, as a long
        sort, regex or pandas operation would not."""
        ledger_for(workflow_id, "gil")
        ctypes.PyDLL(None).sleep(seconds)
        return "held"

    @durable.workflow(name="core.gil_heavy")
    def gil_heavy(seconds: int) -> list[str]:
        wid = durable.workflow_id
        return [side_effect(wid, "before"), hold_gil(wid, seconds), side_effect(wid, "after")]

    ns.__dict__.update(
        gil_heavy=gil_heavy,
        between=between,
        side_effect=side_effect,
        five_steps=five_steps,
        retrying=retrying,
        exhausts=exhausts,
        errors_then_gate=errors_then_gate,
        branching=branching,
        rejects=rejects,
        echo=echo,
    )
    return ns


# the worker subprocess: `celery -A tests.apps.core worker`
if os.environ.get("DBOS_TEST_SCHEMA"):
    _ns = build()
    app = _ns.app
    durable = _ns.durable
