"""The app of the caller's-transaction tests, run by real `celery worker`
processes: a workflow that needs the business row its producer wrote in the
same transaction (it fails, as Celery's classic race does, when it runs
before that commit), and one that waits for a message."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tests.support import _test_sql, app_from_env, write_ledger

__all__ = ["build"]


class DoesNotExist(Exception):
    """The business row is not there (not committed yet, or rolled back)."""


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    ns = app_from_env("intx", env, **durable_options)
    durable, schema = ns.durable, ns.schema

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

    ns.ship, ns.inbox = ship, inbox
    return ns


app = build().app
