"""The app that tests of parked durable.call / gather / child result() run
in real `celery worker` processes.

Same pattern as tests/apps/park.py: every run of a ``pc.*`` workflow writes
"start" and "end" to the ledger, so a test sees how many runs there were and
how many overlapped. The Celery tasks they call (``pc.t.*``) are routed to
``<queue>_tasks``, served by worker processes of their own; each task run
writes ``task <what>`` to the ledger under the calling workflow's id.

``DBOS_TEST_SWEEP_INTERVAL`` (tests/support.py ENV_OPTIONS) switches the sweep off.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

from dbos_celery import ResultTimeoutError
from tests.support import app_from_env, wait_gate, write_ledger


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    ns = app_from_env("parkcalls", env, defaults={"poll_interval": 0.3}, **durable_options)
    app, durable, schema = ns.app, ns.durable, ns.schema
    ns.tasks_queue = f"{ns.queue}_tasks"
    app.conf.task_routes = {"pc.t.*": {"queue": ns.tasks_queue}}

    def ledger(workflow_id: str, what: str) -> None:
        write_ledger(schema, workflow_id, what)

    @app.task(name="pc.t.work")
    def work(tag: str, what: str, seconds: float = 0.0) -> str:
        ledger(tag, f"task {what}")
        time.sleep(seconds)
        return what.upper()

    @app.task(name="pc.t.held")
    def held(tag: str, what: str) -> str:
        """Runs until the test opens the gate "held" of workflow "all"."""
        ledger(tag, f"task {what}")
        wait_gate(schema, "all", "held")
        return what.upper()

    @durable.workflow(name="pc.call")
    def call(what: str, hold: bool = False, seconds: float = 0.0) -> str:
        """Calls pc.t.held (``hold``) or pc.t.work, taking ``seconds``."""
        wid = durable.workflow_id
        ledger(wid, "start")
        try:
            if hold:
                return str(durable.call(held, wid, what))
            return str(durable.call(work, wid, what, seconds))
        finally:
            ledger(wid, "end")

    @durable.workflow(name="pc.gather")
    def gather(n: int, seconds: float = 0.0) -> list[str]:
        wid = durable.workflow_id
        ledger(wid, "start")
        try:
            return durable.gather(*[durable.task(work, wid, f"g{i}", seconds) for i in range(n)])
        finally:
            ledger(wid, "end")

    @durable.workflow(name="pc.child")
    def child(topic: str) -> Any:
        wid = durable.workflow_id
        ledger(wid, "start")
        try:
            return durable.recv(topic, timeout=86400)  # above any test sweep interval
        finally:
            ledger(wid, "end")

    @durable.workflow(name="pc.parent")
    def parent(topic: str, timeout: float | None = None) -> Any:
        """Starts a child (id ``{parent}-0``) that waits for ``topic``, then
        waits for its result (with ``timeout``: "timeout" when it passes)."""
        wid = durable.workflow_id
        ledger(wid, "start")
        try:
            handle = child.start(topic)
            try:
                return handle.result(timeout=timeout)
            except ResultTimeoutError:
                return "timeout"
        finally:
            ledger(wid, "end")

    ns.__dict__.update(work=work, held=held, call=call, gather=gather, child=child, parent=parent)
    return ns


# the worker subprocess: `celery -A tests.apps.parkcalls worker`
if os.environ.get("DBOS_TEST_SCHEMA"):
    _ns = build()
    app = _ns.app
    durable = _ns.durable
