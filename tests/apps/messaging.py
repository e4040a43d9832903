"""The app that messaging tests run in real `celery worker` processes.

``build()`` makes a fresh app + Durable bound to one test's schema and queue
(same pattern as tests/apps/core.py); the worker subprocess builds it from
the environment (module-level ``app``). Workflows are named ``msg.*``.

Extra environment read here: ``DBOS_TEST_POLL_INTERVAL`` (seconds, default
0.3), so that tests can make polling fast, or slow enough to tell a Redis
wakeup from a poll.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

from tests.support import app_from_env, ledger_count, write_ledger


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    ns = app_from_env("messaging", env, defaults={"poll_interval": 0.3}, **durable_options)
    durable, schema = ns.durable, ns.schema

    def ledger(workflow_id: str, what: str) -> None:
        write_ledger(schema, workflow_id, what)

    @durable.step(name="msg.mark")
    def mark(workflow_id: str, what: str) -> str:
        ledger(workflow_id, what)
        return what

    @durable.step(name="msg.hold_once")
    def hold_once(workflow_id: str, seconds: float) -> None:
        """Hold the first time only (a retry after a kill returns at once)."""
        first_attempt = ledger_count(schema, workflow_id, "hold") == 0
        ledger(workflow_id, "hold")
        if first_attempt:
            time.sleep(seconds)

    @durable.workflow(name="msg.collect")
    def collect(n: int, topic: str | None = None, timeout: float = 30.0) -> list[Any]:
        """recv ``n`` messages on ``topic``; stops at the first timeout (None)."""
        ledger(durable.workflow_id, "run")  # not a step: written on every execution
        got: list[Any] = []
        for _ in range(n):
            m = durable.recv(topic, timeout=timeout)
            got.append(m)
            if m is None:
                break
        return got

    @durable.workflow(name="msg.collect_plan")
    def collect_plan(plan: list[list[Any]], timeout: float = 20.0) -> list[list[Any]]:
        """For each [topic, count] in order, recv ``count`` messages on that
        topic, then a final recv(timeout=0) per topic that must find nothing."""
        out: list[list[Any]] = []
        for topic, count in plan:
            out.append([durable.recv(topic, timeout=timeout) for _ in range(count)])
        for topic, _ in plan:
            out.append([durable.recv(topic, timeout=0)])
        return out

    @durable.workflow(name="msg.recv_hold_recv")
    def recv_hold_recv(topic: str, hold: float) -> list[Any]:
        wid = durable.workflow_id
        first = durable.recv(topic, timeout=30)
        mark(wid, f"got:{first}")
        hold_once(wid, hold)
        second = durable.recv(topic, timeout=30)
        mark(wid, f"got:{second}")
        return [first, second]

    @durable.workflow(name="msg.send_many")
    def send_many(destination_id: str, n: int, topic: str | None, pace: float) -> int:
        for i in range(n):
            durable.send(destination_id, i, topic)
            time.sleep(pace)  # plain sleep: replays pace too, sends nothing twice
        return n

    @durable.workflow(name="msg.timed_recv")
    def timed_recv(timeout: float) -> Any:
        wid = durable.workflow_id
        ledger(wid, "run")  # not a step: written on every execution
        got = durable.recv("never", timeout=timeout)
        mark(wid, "returned")
        return got

    @durable.workflow(name="msg.events")
    def events() -> Any:
        durable.set_event("stage", "started")
        got = durable.recv("go", timeout=30)
        durable.set_event("stage", f"got {got}")
        durable.set_event("done", {"value": got})
        return got

    @durable.workflow(name="msg.send_to")
    def send_to(destination_id: str, message: Any, topic: str | None = None) -> str:
        durable.send(destination_id, message, topic)
        return "sent"

    @durable.workflow(name="msg.echo")
    def echo(value: Any = None) -> Any:
        return value

    step_attempts: dict[str, int] = {}

    @durable.step(
        name="msg.send_in_step", max_attempts=2, interval=0.01, retry_on=(ConnectionError,)
    )
    def send_in_step(destination_id: str, idempotency_key: str | None, fail_first: bool) -> int:
        k = f"{destination_id}/{idempotency_key}"
        n = step_attempts[k] = step_attempts.get(k, 0) + 1
        durable.send(destination_id, f"from step, attempt {n}", idempotency_key=idempotency_key)
        if fail_first and n == 1:
            raise ConnectionError("first attempt fails after sending")
        return n

    @durable.workflow(name="msg.send_from_step")
    def send_from_step(
        destination_id: str, idempotency_key: str | None, fail_first: bool = False
    ) -> int:
        return send_in_step(destination_id, idempotency_key, fail_first)

    @durable.step(name="msg.recv_in_step")
    def recv_in_step() -> Any:
        return durable.recv("t", timeout=0)

    def bad_call(case: str, destination_id: str) -> None:
        huge = "x" * (durable.services.settings.max_message_bytes + 1)
        calls: dict[str, Any] = {
            "send_unknown_destination": lambda: durable.send("no-such-workflow", "x"),
            "send_unserializable": lambda: durable.send(destination_id, object()),
            "send_oversize": lambda: durable.send(destination_id, huge),
            "send_int_topic": lambda: durable.send(destination_id, "x", 5),
            "send_empty_topic": lambda: durable.send(destination_id, "x", ""),
            "recv_int_topic": lambda: durable.recv(5),  # type: ignore[arg-type]
            "recv_empty_topic": lambda: durable.recv(""),
            "recv_negative_timeout": lambda: durable.recv("t", timeout=-1),
            "recv_nan_timeout": lambda: durable.recv("t", timeout=float("nan")),
            "set_event_unserializable": lambda: durable.set_event("k", {1, 2}),
            "set_event_oversize": lambda: durable.set_event("k", huge),
            "get_event_negative_timeout": lambda: durable.get_event(destination_id, "k", -1),
            "recv_in_step": recv_in_step,
        }
        calls[case]()

    @durable.workflow(name="msg.attempt")
    def attempt(case: str, destination_id: str) -> str:
        bad_call(case, destination_id)
        return "no error"

    ns.__dict__.update(
        collect=collect,
        collect_plan=collect_plan,
        recv_hold_recv=recv_hold_recv,
        send_many=send_many,
        timed_recv=timed_recv,
        events=events,
        send_to=send_to,
        echo=echo,
        send_from_step=send_from_step,
        attempt=attempt,
    )
    return ns


# the worker subprocess: `celery -A tests.apps.messaging worker`
if os.environ.get("DBOS_TEST_SCHEMA"):
    _ns = build()
    app = _ns.app
    durable = _ns.durable
