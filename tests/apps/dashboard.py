"""The app whose workflows the dashboard tests look at, run by a real
`celery worker` (same pattern as tests/apps/core.py: ``build()`` makes a
fresh app + Durable bound to one test's schema and queue; the worker
subprocess builds it from the environment).

Workflows are named ``dash.*``: an order with steps, a ``durable.call`` of
a plain Celery task and a child workflow; one that fails in a nested call
(a traceback); one that waits in ``recv`` holding its worker slot; one
that parks in ``recv`` (its task's time limit makes it park after about
2 s, whatever ``park_after`` is: the tests run the worker with parking off
so that the slot-holding wait stays unparked).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from tests.support import app_from_env

PARK_LIMIT = 3  # the parking workflow's time limit: it parks 0.75 s before it


class PaymentDeclined(Exception):
    """A user exception raised deep in a step."""


def build(env: dict[str, str] | None = None, **durable_options: Any) -> SimpleNamespace:
    ns = app_from_env("dash", env, defaults={"poll_interval": 0.2}, **durable_options)
    app, durable = ns.app, ns.durable

    @app.task(name="dash.charge_card")
    def charge_card(order_id: str, cents: int) -> dict[str, Any]:
        """An existing Celery task, called durably."""
        return {"charged": cents, "order": order_id}

    @durable.step(name="dash.reserve")
    def reserve(order_id: str, items: list[str]) -> dict[str, Any]:
        return {"reserved": items, "order": order_id}

    @durable.step(name="dash.label")
    def label(order_id: str) -> str:
        return f"TRACK-{order_id}"

    @durable.workflow(name="dash.ship")
    def ship(order_id: str) -> str:
        return label(order_id)

    @durable.workflow(name="dash.order")
    def order(order_id: str, items: list[str]) -> dict[str, Any]:
        reserved = reserve(order_id, items)
        charged = durable.call(charge_card, order_id, 4200)
        tracking = ship.start(order_id).result()
        durable.set_event("stage", "shipped")
        return {"reserved": reserved["reserved"], "charged": charged["charged"],
                "tracking": tracking}  # fmt: skip

    def _check_card(card: str, why: str) -> None:
        if card.startswith("0000"):
            raise PaymentDeclined(why)

    @durable.step(name="dash.validate")
    def validate(card: str, why: str) -> str:
        _check_card(card, why)
        return card

    @durable.workflow(name="dash.fails")
    def fails(card: str, why: str) -> str:
        return validate(card, why)

    @durable.step(name="dash.note")
    def note(text: str) -> str:
        return text

    @durable.workflow(name="dash.waits")
    def waits(topic: str, remark: str = "") -> Any:
        """Notes ``remark``, sets it as the event ``remark``, then waits for
        a message on ``topic`` (up to an hour) and returns it."""
        note(remark)
        durable.set_event("remark", remark)
        return durable.recv(topic, timeout=3600)

    @durable.workflow(name="dash.parks", time_limit=PARK_LIMIT)
    def parks(topic: str, remark: str = "") -> Any:
        """``waits``, parking before its time limit."""
        note(remark)
        durable.set_event(remark or "remark", remark)
        return durable.recv(topic, timeout=3600)

    ns.__dict__.update(order=order, ship=ship, fails=fails, waits=waits, parks=parks,
                       charge_card=charge_card)  # fmt: skip
    return ns


# the worker subprocess: `celery -A tests.apps.dashboard worker`
if os.environ.get("DBOS_TEST_SCHEMA"):
    _ns = build()
    app = _ns.app
    durable = _ns.durable
