"""The app of the chaos workload, for worker subprocesses and the harness.

Built from the DBOS_TEST_* variables (tests/support.py ``app_from_env``):
the library's tables in a private Postgres cluster, wakeups and the Celery
broker on a private Redis; the ledger of side effects in the shared Postgres
(``DBOS_TEST_LEDGER_URL``), which no fault touches. Workflows run on the
queue ``DBOS_TEST_QUEUE``; the plain Celery task they ``durable.call`` on
``<queue>_tasks``, served by workers of their own (a call holds its
workflow's slot, so sharing the pool could deadlock).

One workflow ``chaos.wf(i, n)`` (id ``wid(i)``): step s1, recv "p",
step s2, call of ``chaos.t.effect``, recv "p", send to ``wid(i+1)`` on
"peer", recv "peer", step s3. Each step and the task write a ledger row.

The GIL fault: the harness puts a row in the ledger's ``gil`` table; the
next step body to run takes it and holds the GIL that long in one C call
(a long sort or regex would), stopping every thread of its process.
"""

from __future__ import annotations

import ctypes
import os
import time
from types import SimpleNamespace
from typing import Any

import psycopg

from tests.support import DATABASE_URL, app_from_env

RECV_TIMEOUT = 600.0  # never reached in a healthy run: a None is a violation
STEPS = ("s1", "s2", "s3")


def wid(i: int, n: int) -> str:
    return f"wf-{i % n:05d}"


def tasks_queue(queue: str) -> str:
    return f"{queue}_tasks"


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    e = dict(os.environ if env is None else env)
    defaults = {
        "database_retry_timeout": float(e.get("DBOS_TEST_DB_RETRY_TIMEOUT") or 5.0),
        "enqueued_timeout": 2.0,
        "call_redispatch_after": 3.0,
        "poll_interval": 0.5,
    }
    ns = app_from_env("chaos", env, defaults=defaults, **durable_options)
    app, durable, schema = ns.app, ns.durable, ns.schema
    ledger_url = e.get("DBOS_TEST_LEDGER_URL") or DATABASE_URL
    app.conf.task_routes = {"chaos.t.*": {"queue": tasks_queue(ns.queue)}}
    app.conf.broker_transport_options = {"socket_timeout": 5, "socket_connect_timeout": 2}

    def record(workflow_id: str, what: str) -> None:
        """A side effect, stamped with the time its body started: a body
        begun before a freeze (SIGSTOP) and resumed after a takeover is the
        one overlap fencing cannot prevent (README), not a re-run after the
        checkpoint."""
        began = time.time()
        for attempt in range(50):  # the ledger's server is never faulted; be patient anyway
            try:
                with psycopg.connect(ledger_url, autocommit=True) as conn:
                    conn.execute(
                        f'INSERT INTO "{schema}".ledger (workflow_id, what, at) '
                        "VALUES (%s, %s, %s)",
                        (workflow_id, what, began),
                    )
                    hold = conn.execute(
                        f'DELETE FROM "{schema}".gil WHERE id = (SELECT min(id) FROM '
                        f'"{schema}".gil) RETURNING seconds'
                    ).fetchone()
                if hold is not None:
                    ctypes.PyDLL(None).sleep(int(hold[0]))  # holds the GIL throughout
                return
            except psycopg.OperationalError:
                time.sleep(0.1 * attempt)
        raise RuntimeError("ledger unreachable")

    steps = {
        what: durable.step(name=f"chaos.{what}")(
            lambda workflow_id, what=what: (record(workflow_id, what), what)[1]
        )
        for what in STEPS
    }

    @app.task(name="chaos.t.effect")
    def effect(workflow_id: str) -> str:
        record(workflow_id, "call")
        return "called"

    @durable.workflow(name="chaos.wf")
    def wf(i: int, n: int) -> dict[str, Any]:
        me = durable.workflow_id
        out: dict[str, Any] = {"steps": [steps["s1"](me)]}
        m1 = durable.recv("p", timeout=RECV_TIMEOUT)
        out["steps"].append(steps["s2"](me))
        out["call"] = durable.call(effect, me)
        m2 = durable.recv("p", timeout=RECV_TIMEOUT)
        durable.send(wid(i + 1, n), {"from": me}, topic="peer")
        out["peer"] = durable.recv("peer", timeout=RECV_TIMEOUT)
        out["steps"].append(steps["s3"](me))
        out["p"] = [m1, m2]
        return out

    ns.wf = wf
    ns.effect = effect
    return ns


def expected(i: int, n: int) -> dict[str, Any]:
    me = wid(i, n)
    return {
        "steps": list(STEPS),
        "call": "called",
        "peer": {"from": wid(i - 1, n)},
        "p": [{"wf": me, "k": 0}, {"wf": me, "k": 1}],
    }


# the worker subprocess: `celery -A tests.chaos.app worker`
if os.environ.get("DBOS_TEST_SCHEMA"):
    _ns = build()
    app = _ns.app
    durable = _ns.durable
