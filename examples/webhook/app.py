"""A FastAPI service whose handlers start workflows and deliver webhooks to
them with the awaitable producer calls, never blocking the event loop.

``POST /orders/{order_id}`` starts the ``webhook.order`` workflow, which
waits (parked, no worker slot held) for the payment provider's webhook;
``POST /webhooks/payment`` delivers it exactly once per provider event id,
however often the provider retries; ``GET /orders/{order_id}`` reports the
workflow's status and result.

Serve it with any ASGI server (``uvicorn examples.webhook.app:api``) and run
the workflows on a Celery worker (``celery -A examples.webhook.app worker
-Q webhook``). Settings come from the environment: DATABASE_URL, REDIS_URL,
BROKER_URL, SCHEMA and QUEUE (as for the other examples).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from dbos_celery import Durable, NonExistentWorkflowError

DATABASE_URL = os.environ.get("DATABASE_URL")  # None: Durable's embedded SQLite file
REDIS_URL = os.environ.get("REDIS_URL") or None
BROKER_URL = os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/1")
SCHEMA = os.environ.get("SCHEMA", "webhook_example")
QUEUE = os.environ.get("QUEUE", "webhook")

app = Celery("webhook", broker=BROKER_URL)
app.conf.task_default_queue = QUEUE
app.conf.broker_connection_retry_on_startup = True
durable = Durable(app, DATABASE_URL, redis_url=REDIS_URL, schema=SCHEMA, park_after=1.0)


@durable.step(name="webhook.ship")
def ship(order_id: str, amount: float) -> str:
    return f"shipped {order_id} ({amount:.2f} paid)"


@durable.workflow(name="webhook.order")
def order(order_id: str) -> str:
    payment = durable.recv("payment", timeout=3600)
    if payment is None:
        return "not paid within an hour"
    return ship(order_id, payment["amount"])


class Payment(BaseModel):
    event_id: str  # the provider's id: a retried webhook carries the same
    order_id: str
    amount: float


api = FastAPI()


@api.post("/orders/{order_id}")
async def create_order(order_id: str) -> dict[str, str]:
    handle = await order.astart(order_id, workflow_id=order_id)
    return {"order": handle.workflow_id}


@api.post("/webhooks/payment")
async def payment_webhook(payment: Payment) -> dict[str, bool]:
    try:
        await durable.asend(payment.order_id, {"amount": payment.amount}, topic="payment",
                            idempotency_key=payment.event_id)  # fmt: skip
    except NonExistentWorkflowError:
        raise HTTPException(status_code=404, detail="no such order") from None
    return {"ok": True}


@api.get("/orders/{order_id}")
async def order_status(order_id: str) -> dict[str, Any]:
    try:
        handle = await durable.aretrieve(order_id)
        status = await handle.astatus()
    except NonExistentWorkflowError:
        raise HTTPException(status_code=404, detail="no such order") from None
    done = status.status == "SUCCESS"
    return {"status": status.status, "result": await handle.aresult(timeout=5) if done else None}
