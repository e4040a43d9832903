"""The app that management tests run in real `celery worker` processes:
cancel, resume, fork, durable sleep and timeouts.

``build()`` makes a fresh app + Durable bound to one test's schema and queue
(same pattern as tests/apps/core.py); the worker subprocess builds it from
the environment (module-level ``app``). Workflows are named ``mgmt.*``.
Steps record their side effects in the test's ledger table; a step called
with ``gate=True`` then waits until the test opens its gate
(``tests.apps.core.open_gate``; not imported here, since importing
tests.apps.core in a worker would build its app too).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from tests.support import app_from_env, wait_gate, write_ledger


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    ns = app_from_env("manage", env, **durable_options)
    durable, schema = ns.durable, ns.schema

    def ledger(workflow_id: str, what: str) -> None:
        write_ledger(schema, workflow_id, what)

    @durable.step(name="mgmt.mark")
    def mark(workflow_id: str, what: str, gate: bool = False) -> str:
        ledger(workflow_id, what)
        if gate:
            wait_gate(schema, workflow_id, what)
        return what

    @durable.workflow(name="mgmt.steps")
    def steps(n: int, gate_at: int = -1) -> list[str]:
        """``n`` steps s0..s{n-1} (named after their seq); step ``gate_at``
        waits at its gate. Every call sits in ``except Exception``, which must
        not swallow a cancel."""
        wid = durable.workflow_id
        out = []
        for i in range(n):
            try:
                out.append(mark(wid, f"s{i}", i == gate_at))
            except Exception as exc:
                ledger(wid, f"swallowed {type(exc).__name__}")
        return out

    @durable.workflow(name="mgmt.waits")
    def waits(topic: str, wait: float = 60.0) -> Any:
        wid = durable.workflow_id
        mark(wid, "before")
        got = durable.recv(topic, timeout=wait)
        mark(wid, "after")
        return got

    @durable.workflow(name="mgmt.sleeps")
    def sleeps(seconds: float) -> str:
        wid = durable.workflow_id
        ledger(wid, "run")  # not a step: written on every execution
        durable.sleep(seconds)
        return mark(wid, "woke")

    @durable.workflow(name="mgmt.parent")
    def parent(wait: float) -> Any:
        """Starts a waiting child (id ``{parent}-0``), then waits itself."""
        wid = durable.workflow_id
        waits.start("never", wait)
        mark(wid, "started child")
        got = durable.recv("never", timeout=wait)
        mark(wid, "after")
        return got

    ns.__dict__.update(steps=steps, waits=waits, sleeps=sleeps, parent=parent)
    return ns


# the worker subprocess: `celery -A tests.apps.manage worker`
if os.environ.get("DBOS_TEST_SCHEMA"):
    _ns = build()
    app = _ns.app
    durable = _ns.durable
