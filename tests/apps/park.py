"""The app that parking tests run in real `celery worker` processes.

``build()`` makes a fresh app + Durable bound to one test's schema and queue
(same pattern as tests/apps/core.py); the worker subprocess builds it from
the environment (module-level ``app``). Workflows are named ``park.*``.
Every execution of a workflow writes "start" and "end" to the test's ledger
(not steps: written on every run, a parked run included), so a test sees how
many runs there were and how many overlapped.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from tests.support import app_from_env, write_ledger


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    ns = app_from_env("park", env, **durable_options)
    durable, schema = ns.durable, ns.schema
    routed = (env if env is not None else os.environ).get("DBOS_TEST_ROUTE_QUEUE")
    if routed:  # the app routes its workflows to a queue of their own
        ns.app.conf.task_routes = {"park.*": {"queue": routed}}

    def ledger(workflow_id: str, what: str) -> None:
        write_ledger(schema, workflow_id, what)

    @durable.step(name="park.mark")
    def mark(workflow_id: str, what: str) -> str:
        ledger(workflow_id, what)
        return what

    @durable.workflow(name="park.waits")
    def waits(topic: str, timeout: float) -> Any:
        wid = durable.workflow_id
        ledger(wid, "start")
        try:
            got = durable.recv(topic, timeout=timeout)
            mark(wid, f"got {got!r}")
            return got
        finally:
            ledger(wid, "end")

    @durable.workflow(name="park.quiet")
    def quiet(topic: str, timeout: float) -> Any:
        """waits without the ledger: for many workflows at once."""
        return durable.recv(topic, timeout=timeout)

    @durable.workflow(name="park.soft_limited", soft_time_limit=3)
    def soft_limited(topic: str, timeout: float) -> Any:
        return durable.recv(topic, timeout=timeout)

    @durable.workflow(name="park.hard_limited", time_limit=3)
    def hard_limited(topic: str, timeout: float) -> Any:
        return durable.recv(topic, timeout=timeout)

    @durable.workflow(name="park.sleeps")
    def sleeps(seconds: float) -> str:
        wid = durable.workflow_id
        ledger(wid, "start")
        try:
            durable.sleep(seconds)
            return mark(wid, "woke")
        finally:
            ledger(wid, "end")

    @durable.workflow(name="park.parent")
    def parent(topic: str) -> Any:
        """Starts a child (id ``{parent}-0``), waits for its event "got",
        then for its result: each wait parks when long."""
        wid = durable.workflow_id
        ledger(wid, "start")
        try:
            child = child_.start(topic)
            event = durable.get_event(child.workflow_id, "got", timeout=600)
            mark(wid, f"event {event!r}")
            return [event, child.result()]
        finally:
            ledger(wid, "end")

    @durable.workflow(name="park.child")
    def child_(topic: str) -> Any:
        first = durable.recv(topic, timeout=600)
        durable.set_event("got", first)
        return [first, durable.recv(topic, timeout=600)]

    ns.__dict__.update(waits=waits, quiet=quiet, sleeps=sleeps, parent=parent, child=child_,
                       soft_limited=soft_limited, hard_limited=hard_limited)  # fmt: skip
    return ns


# the worker subprocess: `celery -A tests.apps.park worker`
if os.environ.get("DBOS_TEST_SCHEMA"):
    _ns = build()
    app = _ns.app
    durable = _ns.durable
