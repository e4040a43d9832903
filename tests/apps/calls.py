"""The app that durable.call tests run in real `celery worker` processes.

Same pattern as tests/apps/core.py: ``build()`` makes a fresh app + Durable
bound to one test's schema and queues; the worker subprocess builds it from
the environment (module-level ``app``). Workflows run on the test's queue;
the existing Celery tasks they call (plain ``@app.task`` functions named
``calls.t.*``, which know nothing of dbos_celery) are routed to a second
queue, ``<queue>_tasks``, served by worker processes of their own.

Every task run writes its ``what`` to the ledger under its tag (the calling
workflow's id) and its Celery task id under ``id:<tag>``. Gates as in core:
a gated task waits until the test opens its gate.

Extra environment: ``DBOS_TEST_POLL_INTERVAL`` (default 0.3 s) and
``DBOS_TEST_CALL_REDISPATCH_AFTER`` (default: the library's).
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

from tests.support import (
    DATABASE_URL,
    app_from_env,
    ledger_count,
    run_sql,
    wait_gate,
    write_ledger,
)


class TaskRejected(Exception):
    """A task's own exception type: the workflow must see this type."""


def tasks_queue(queue: str) -> str:
    return f"{queue}_tasks"


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    ns = app_from_env("calls", env, defaults={"poll_interval": 0.3}, **durable_options)
    app, durable, schema = ns.app, ns.durable, ns.schema
    queue = ns.queue
    tq = tasks_queue(queue)
    url = (os.environ if env is None else env).get("DBOS_TEST_DATABASE_URL", DATABASE_URL)
    app.conf.task_routes = {"calls.t.*": {"queue": tq}}
    ns.tasks_queue = tq

    # --- existing Celery tasks ------------------------------------------------

    @app.task(name="calls.t.record", bind=True)
    def record(
        self: Any, tag: str, what: str, gate: bool = False, fail: bool = False, hold: float = 0.0
    ) -> str:
        write_ledger(schema, f"id:{tag}", str(self.request.id))  # first: tests wait for `what`
        write_ledger(schema, tag, what)
        if hold:
            time.sleep(hold)
        if gate:
            wait_gate(schema, tag, what)
        if fail:
            raise TaskRejected(what)
        return what.upper()

    @app.task(name="calls.t.record_b")
    def record_b(tag: str, what: str) -> str:
        write_ledger(schema, tag, f"b:{what}")
        return what

    # --- workflows ------------------------------------------------------------

    @durable.step(name="calls.gate")
    def gate(tag: str, what: str) -> str:
        write_ledger(schema, tag, what)
        wait_gate(schema, tag, what)
        return what

    @durable.step(name="calls.settled")
    def settled(workflow_id: str) -> int:
        """How many call outcomes of the workflow are recorded now."""
        rows = run_sql(
            url, schema,
            "SELECT count(*) FROM {schema}.steps WHERE workflow_id = %s AND name LIKE %s",
            workflow_id, "durable.call:%",
        )  # fmt: skip
        return int(rows[0][0])

    @durable.workflow(name="calls.three")
    def three() -> list[str]:
        """Three calls, in the three accepted forms; the third is gated."""
        wid = durable.workflow_id
        return [
            durable.call(record, wid, "t1"),
            durable.call(record.s(wid, "t2")),
            durable.call("calls.t.record", wid, "t3", gate=True),
        ]

    @durable.workflow(name="calls.one")
    def one(what: str, gate: bool = False) -> str:
        return str(durable.call(record, durable.workflow_id, what, gate=gate))

    @durable.workflow(name="calls.on_queue")
    def on_queue(queue_name: str, what: str) -> str:
        return str(durable.call(record.s(durable.workflow_id, what).set(queue=queue_name)))

    @durable.workflow(name="calls.fan_out")
    def fan_out(n: int, fail_index: int = -1) -> dict[str, Any]:
        wid = durable.workflow_id
        # the failing task fails at once; the others take a while
        tasks = [
            durable.task(
                record, wid, f"g{i}", fail=i == fail_index, hold=0.0 if i == fail_index else 0.05
            )
            for i in range(n)
        ]
        try:
            return {"results": durable.gather(*tasks)}
        except TaskRejected as exc:
            return {"error": str(exc), "settled": settled(wid)}

    @durable.workflow(name="calls.fan_gated")
    def fan_gated(quick: int, gated: int) -> list[str]:
        wid = durable.workflow_id
        return durable.gather(
            *[durable.task(record, wid, f"q{i}") for i in range(quick)],
            *[record.s(wid, f"s{i}", gate=True) for i in range(gated)],
        )

    @durable.workflow(name="calls.branching")
    def branching() -> str:
        """Not deterministic on purpose: which task it calls depends on a
        read outside any step (a 'flip' row in the ledger)."""
        wid = durable.workflow_id
        name = "calls.t.record_b" if ledger_count(schema, wid, "flip") else "calls.t.record"
        out = str(durable.call(name, wid, "x"))
        gate(wid, "wait")
        return out

    @durable.step(name="calls.call_from_step")
    def call_from_step() -> str:
        return str(durable.call(record, "nowhere", "never"))

    @durable.workflow(name="calls.in_step")
    def in_step() -> str:
        try:
            return call_from_step()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    @durable.workflow(name="calls.child", queue=tq)
    def child(n: int) -> int:
        wid = durable.workflow_id
        write_ledger(schema, wid, "child-run")  # not a step: every execution
        gate(wid, "child")
        return n * 2

    @durable.workflow(name="calls.parent")
    def parent(n: int) -> dict[str, Any]:
        wid = durable.workflow_id
        handle = child.start(n)
        write_ledger(schema, wid, "parent-run")  # not a step: every execution
        return {"child": handle.workflow_id, "result": handle.result()}

    ns.__dict__.update(
        record=record, record_b=record_b, three=three, one=one, on_queue=on_queue,
        fan_out=fan_out, fan_gated=fan_gated, branching=branching, in_step=in_step,
        child=child, parent=parent,
    )  # fmt: skip
    return ns


# the worker subprocess: `celery -A tests.apps.calls worker`
if os.environ.get("DBOS_TEST_SCHEMA"):
    _ns = build()
    app = _ns.app
    durable = _ns.durable
