"""Fan-out: call existing Celery tasks in parallel from a workflow, then
aggregate their results.

``quote`` is a plain ``@app.task``, unchanged: it knows nothing about
workflows. The workflow sends one ``quote`` per supplier with
``durable.gather`` (all at once, results in order), then picks the cheapest.
Each task's result is checkpointed as it arrives: after a crash the workflow
waits only for the quotes it does not have yet, and sends none twice.

Run it as a program (an in-process worker for workflows and tasks)::

    python -m examples.fanout.app

With no settings it needs no servers (an SQLite file in the working
directory, in-process wakeups, an in-memory broker). Settings come from the
environment: DATABASE_URL, REDIS_URL, BROKER_URL, SCHEMA and QUEUE (the
tasks go to QUEUE + "_tasks"); with the URLs set, run workflows and tasks on
real workers::

    celery -A examples.fanout.app worker -Q fanout
    celery -A examples.fanout.app worker -Q fanout_tasks
"""

from __future__ import annotations

import os
import sys
import time
import uuid
import zlib
from typing import Any

from celery import Celery

from dbos_celery import Durable

DATABASE_URL = os.environ.get("DATABASE_URL")  # None: Durable's embedded SQLite file
REDIS_URL = os.environ.get("REDIS_URL") or None  # None: in-process wakeups and polling
BROKER_URL = os.environ.get("BROKER_URL", "memory://localhost/")  # in this process only
SCHEMA = os.environ.get("SCHEMA", "fanout_example")
QUEUE = os.environ.get("QUEUE", "fanout")
TASKS_QUEUE = f"{QUEUE}_tasks"

app = Celery("fanout", broker=BROKER_URL)
app.conf.task_default_queue = QUEUE
app.conf.broker_connection_retry_on_startup = True
app.conf.broker_transport_options = {"polling_interval": 0.05}  # how often memory:// polls
# called tasks run on workers of their own: a workflow waiting for them holds its slot
app.conf.task_routes = {"fanout.quote": {"queue": TASKS_QUEUE}}

durable = Durable(app, DATABASE_URL, redis_url=REDIS_URL, schema=SCHEMA)

SUPPLIERS = ["acme", "globex", "initech", "umbrella", "hooli"]


def unit_price(supplier: str, sku: str) -> float:
    """A made-up but stable price list."""
    return 10 + zlib.crc32(f"{supplier}/{sku}".encode()) % 4000 / 100


@app.task(name="fanout.quote")  # an existing Celery task, unchanged
def quote(supplier: str, sku: str, quantity: int) -> float:
    time.sleep(0.2)  # the supplier's API takes a while
    total = round(unit_price(supplier, sku) * quantity, 2)
    print(f"  [task] {supplier} quotes {total:.2f} for {quantity} x {sku}", flush=True)
    return total


@durable.workflow(name="fanout.best_quote")
def best_quote(sku: str, quantity: int) -> dict[str, Any]:
    totals = durable.gather(*[durable.task(quote, s, sku, quantity) for s in SUPPLIERS])
    quotes = dict(zip(SUPPLIERS, totals, strict=True))
    best = min(quotes, key=quotes.__getitem__)
    return {"supplier": best, "total": quotes[best], "quotes": quotes}


def main() -> int:
    from celery.contrib.testing.worker import start_worker

    database = "DATABASE_URL" if DATABASE_URL else "embedded SQLite"
    print(f"fanout example: database {database}, schema {SCHEMA!r}, queues {QUEUE!r}+tasks")
    with start_worker(
        app,
        queues=[QUEUE, TASKS_QUEUE],  # one worker for both, in this demo only
        pool="threads",
        concurrency=len(SUPPLIERS) + 1,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=15,
    ):
        request = f"rfq-{uuid.uuid4().hex[:8]}"
        print(f"{request}: asking {len(SUPPLIERS)} suppliers for 40 x widget-7", flush=True)
        started = time.monotonic()
        result = best_quote.start("widget-7", 40, workflow_id=request).result(timeout=30)
        took = time.monotonic() - started
        print(f"{request}: {len(result['quotes'])} quotes in {took:.1f} s")
        print(f"{request}: best {result['supplier']} at {result['total']:.2f}")
    cheapest = min(round(unit_price(s, "widget-7") * 40, 2) for s in SUPPLIERS)
    return 0 if result["total"] == cheapest else 1


if __name__ == "__main__":
    sys.exit(main())
