"""The app that time-limit and crash tests run in real prefork `celery
worker` processes (Celery enforces time limits in the prefork pool). Steps
write to the test's ledger each time their body runs."""

from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from dbos_celery import StepTimeLimitExceeded
from tests.support import app_from_env, write_ledger


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    ns = app_from_env("limits", env, **durable_options)
    durable, schema = ns.durable, ns.schema

    @durable.step(name="limits.slow")
    def slow(workflow_id: str, seconds: float) -> str:
        write_ledger(schema, workflow_id, "slow")
        time.sleep(seconds)
        return "finished"

    @durable.step(name="limits.slow_retried", max_attempts=2, interval=0.0)
    def slow_retried(workflow_id: str, seconds: float) -> str:
        write_ledger(schema, workflow_id, "slow")
        time.sleep(seconds)
        return "finished"

    @durable.step(name="limits.mark")
    def mark(workflow_id: str, what: str) -> str:
        write_ledger(schema, workflow_id, what)
        return what

    def handles(seconds: float) -> str:
        wid = durable.workflow_id
        mark(wid, "before")
        try:
            return slow(wid, seconds)
        except StepTimeLimitExceeded as exc:
            mark(wid, "handled")
            return f"handled: {exc}"

    hard = durable.workflow(name="limits.hard", time_limit=2)(handles)
    unlimited = durable.workflow(name="limits.unlimited")(handles)

    @durable.workflow(name="limits.hard_retried", time_limit=2)
    def hard_retried(seconds: float) -> str:
        return slow_retried(durable.workflow_id, seconds)

    @durable.workflow(name="limits.soft", soft_time_limit=1)
    def soft(seconds: float) -> str:
        wid = durable.workflow_id
        try:
            return slow(wid, seconds)
        except SoftTimeLimitExceeded:
            return mark(wid, "soft")

    @durable.step(name="limits.dies")
    def dies(workflow_id: str) -> None:
        write_ledger(schema, workflow_id, "die")
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a segfault would

    @durable.workflow(name="limits.crashes")
    def crashes() -> str:
        wid = durable.workflow_id
        mark(wid, "before")
        dies(wid)
        return "unreachable"

    ns.__dict__.update(hard=hard, unlimited=unlimited, hard_retried=hard_retried, soft=soft,
                       crashes=crashes)  # fmt: skip
    return ns


# the worker subprocess: `celery -A tests.apps.limits worker`
if os.environ.get("DBOS_TEST_SCHEMA"):
    _ns = build()
    app = _ns.app
    durable = _ns.durable
