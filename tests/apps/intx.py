"""The app of the transaction tests, run by real `celery worker` processes:
a workflow that needs the business row its producer wrote in the same
transaction (it fails, as Celery's classic race does, when it runs before
that commit), one that waits for a message, and a checkout whose payment is
a transaction step."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

from sqlalchemy import text

from tests.support import SQLITE_DIR, _test_sql, app_from_env, wait_gate, write_ledger

__all__ = ["build", "mark", "marks"]


MARKS = SQLITE_DIR


def mark(schema: str, workflow_id: str, what: str) -> None:
    """Note that ``what`` happened in ``workflow_id`` (a line in a file)."""
    MARKS.mkdir(parents=True, exist_ok=True)
    with open(MARKS / f"{schema}.marks", "a") as f:
        f.write(f"{workflow_id} {what}\n")


def marks(schema: str, workflow_id: str) -> list[str]:
    path = MARKS / f"{schema}.marks"
    lines = path.read_text().splitlines() if path.exists() else []
    return [ln.split(" ", 1)[1] for ln in lines if ln.split(" ", 1)[0] == workflow_id]


def wait_mark(schema: str, workflow_id: str, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while what not in marks(schema, workflow_id):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what!r} of {workflow_id!r} never came")
        time.sleep(0.02)


class PaymentDeclined(Exception):
    pass


class DoesNotExist(Exception):
    """The business row is not there (not committed yet, or rolled back)."""


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    ns = app_from_env("intx", env, **durable_options)
    durable, schema = ns.durable, ns.schema
    payments = "payments" if durable.services.store.sqlite else f'"{schema}".payments'

    @durable.step(name="intx.lookup")
    def lookup(workflow_id: str, widget_id: str) -> str:
        rows = _test_sql(schema, "SELECT name FROM {schema}.widgets WHERE id = %s", widget_id)
        write_ledger(schema, workflow_id, "found" if rows else "missing")
        if not rows:
            raise DoesNotExist(widget_id)
        return str(rows[0][0])

    @durable.workflow(name="intx.ship")
    def ship(widget_id: str) -> str:
        return "shipped " + lookup(durable.workflow_id, widget_id)

    @durable.workflow(name="intx.inbox")
    def inbox() -> Any:
        return durable.recv("in", timeout=60)

    @durable.transaction(name="intx.pay")
    def pay(workflow_id: str, order_id: str, gate: bool = False, hold: float = 0.0,
            fail: bool = False) -> int:  # fmt: skip
        """Insert a payment in the step's transaction: exactly once."""
        conn = durable.connection
        conn.execute(text(f"INSERT INTO {payments} (order_id) VALUES (:o)"), {"o": order_id})
        # every run counts (in a file: on SQLite another connection would wait
        # for this transaction's write lock)
        mark(schema, workflow_id, "pay")
        if gate:
            wait_mark(schema, workflow_id, "open:pay")
        if hold:
            time.sleep(hold)
        if fail:
            raise PaymentDeclined(order_id)
        got = conn.execute(text(f"SELECT count(*) FROM {payments} WHERE order_id = :o"),
                           {"o": order_id})  # fmt: skip
        return int(got.scalar_one())

    @durable.step(name="intx.after")
    def after(workflow_id: str, gate: bool) -> None:
        write_ledger(schema, workflow_id, "after")
        if gate:
            wait_gate(schema, workflow_id, "after")

    @durable.workflow(name="intx.checkout")
    def checkout(order_id: str, gate: str = "", hold: float = 0.0, fail: bool = False) -> Any:
        wid = durable.workflow_id
        try:
            paid = pay(wid, order_id, gate == "pay", hold, fail)
        except PaymentDeclined as exc:
            return f"declined {exc}"
        after(wid, gate == "after")
        return paid

    ns.ship, ns.inbox, ns.pay, ns.checkout = ship, inbox, pay, checkout
    return ns


# the worker subprocess: `celery -A tests.apps.intx worker`
if os.environ.get("DBOS_TEST_SCHEMA"):
    app = build().app
