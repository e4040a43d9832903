"""The app that database-outage tests run in real `celery worker` processes.

The library's tables live in a private Postgres cluster that the test stops
and restarts (``DBOS_TEST_DATABASE_URL``); the ledger of side effects and
the gates live in the shared Postgres (``DBOS_TEST_LEDGER_URL``), so a step
can record its side effect and wait at a gate while the library's database
is down. ``DBOS_TEST_DB_RETRY_TIMEOUT``: ``database_retry_timeout`` (s).
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

import psycopg

from tests.support import DATABASE_URL, app_from_env


def ledger_url(env: dict[str, str] | None = None) -> str:
    e = os.environ if env is None else env
    return e.get("DBOS_TEST_LEDGER_URL") or DATABASE_URL


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    e = dict(os.environ if env is None else env)
    defaults = {
        "database_retry_timeout": float(e.get("DBOS_TEST_DB_RETRY_TIMEOUT") or 3.0),
        "enqueued_timeout": 1.0,
        "poll_interval": 0.3,
    }
    ns = app_from_env("outage", env, defaults=defaults, **durable_options)
    durable, schema = ns.durable, ns.schema
    url = ledger_url(e)

    def record(workflow_id: str, what: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                f'INSERT INTO "{schema}".ledger (workflow_id, what) VALUES (%s, %s)',
                (workflow_id, what),
            )

    def wait_gate(workflow_id: str, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                if conn.execute(
                    f'SELECT 1 FROM "{schema}".ledger WHERE workflow_id = %s AND what = %s',
                    (workflow_id, f"open:{what}"),
                ).fetchone():
                    return
                time.sleep(0.02)
        raise TimeoutError(f"gate {what!r} of {workflow_id!r} was never opened")

    @durable.step(name="outage.effect")
    def effect(workflow_id: str, what: str, gate: bool = False) -> str:
        record(workflow_id, what)
        if gate:
            wait_gate(workflow_id, what)
        return what

    @durable.workflow(name="outage.three")
    def three(gate_step: int = 0) -> list[str]:
        wid = durable.workflow_id
        return [effect(wid, f"step{i}", i == gate_step) for i in (1, 2, 3)]

    ns.three = three
    ns.record = record
    return ns


# the worker subprocess: `celery -A tests.apps.outage worker`
if os.environ.get("DBOS_TEST_SCHEMA"):
    _ns = build()
    app = _ns.app
    durable = _ns.durable
