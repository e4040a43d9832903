"""send -> recv wakeup latency, and sends per second.

    python benchmarks/messaging.py

A workflow on a `celery worker` subprocess loops ``durable.recv()``; this
process sends it messages carrying their send time (``time.time()`` taken
before ``send``), and the workflow returns, per message, the time from that
stamp to its ``recv`` returning.  Once with Redis wakeups, once with polling
only (``redis_url=None``).  Next to them, the floor measured in the same run:
one bare INSERT + COMMIT (psycopg) and one Redis PUBLISH -> subscriber thread
hop.  Target: wakeup p50 <= 1.1 ms, p99 <= 3 ms.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._app import build  # noqa: E402
from benchmarks._common import (  # noqa: E402
    Worker,
    app_env,
    bare_commits,
    bare_pubsub_hops,
    clean_up,
    machine,
    ms,
    new_schema,
    sql,
    summary,
    table,
)

MESSAGES = int(os.environ.get("BENCH_MESSAGES", 500))
POLL_MESSAGES = int(os.environ.get("BENCH_POLL_MESSAGES", 50))
SENDS = int(os.environ.get("BENCH_SENDS", 2000))


def wakeup_latencies(
    ns: SimpleNamespace, schema: str, wid: str, n: int, spacing: Callable[[], float]
) -> list[float]:
    """Start a receiver of n messages on the worker, wait until it is blocked
    in recv, send n stamped messages ``spacing()`` seconds apart."""
    handle = ns.receiver.start(n, workflow_id=wid)
    deadline = time.monotonic() + 30
    # waiting = its recv has checkpointed the deadline (seq 1)
    while not sql(f'SELECT 1 FROM "{schema}".steps WHERE workflow_id = %s', wid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"receiver {wid} did not start")
        time.sleep(0.01)
    time.sleep(0.2)
    send = ns.durable.send
    due = time.perf_counter()
    for _ in range(n):
        due += spacing()
        while (left := due - time.perf_counter()) > 0:
            time.sleep(left if left > 0.002 else 0)  # spin for the last 2 ms
        send(wid, {"t": time.time()})
    return handle.result(timeout=60)


def sends_per_second(ns: SimpleNamespace, destination: str) -> tuple[float, list[float]]:
    send = ns.durable.send
    times = []
    t_all = time.perf_counter()
    for i in range(SENDS):
        t0 = time.perf_counter()
        send(destination, {"i": i, "t": time.time()})
        times.append(time.perf_counter() - t0)
    return SENDS / (time.perf_counter() - t_all), times


def row(name: str, values: list[float]) -> tuple[str, ...]:
    p50, p99, mean = summary(values)
    return (name, ms(p50), ms(p99), ms(mean), str(len(values)))


def main() -> None:
    schema = new_schema()
    env = app_env(schema, f"{schema}_q")
    poll_env = app_env(schema, f"{schema}_pq", wakeups=False)
    ns, ns_poll = build(env), build(poll_env)
    worker = None
    try:
        ns.durable.migrate()
        print(f"dbos_celery messaging benchmark (schema {schema})", flush=True)
        bare = bare_commits(schema, 500)
        hops = bare_pubsub_hops(1000)

        worker = Worker(env, ns.queue).wait_ready(ns.app)
        redis_lat = wakeup_latencies(ns, schema, "recv-redis", MESSAGES, lambda: 0.005)
        rate, send_times = sends_per_second(ns, "recv-redis")
        worker.stop()

        worker = Worker(poll_env, ns_poll.queue).wait_ready(ns_poll.app)
        poll_lat = wakeup_latencies(
            ns_poll, schema, "recv-poll", POLL_MESSAGES, lambda: random.uniform(0.02, 0.2)
        )
        poll_interval = ns_poll.durable.services.settings.poll_interval

        table("machine", machine())
        head = ("", "p50", "p99", "mean", "n")
        table(
            "send -> recv wakeup, waiting workflow on a celery worker (prefork, -c 2)",
            [
                head,
                row("Redis wakeups (5 ms apart)", redis_lat),
                row(f"polling only (poll_interval={poll_interval:g} s)", poll_lat),
                ("target (Redis wakeups)", "<= 1.1 ms", "<= 3 ms"),
            ],
        )
        table(
            "sends from one producer (outside a workflow, Redis wakeups)",
            [
                head,
                row("durable.send() call", send_times),
                ("sends per second", f"{rate:.0f} /s"),
            ],
        )
        table(
            "floor, same run",
            [
                head,
                row("bare INSERT+COMMIT (psycopg)", bare),
                row("Redis PUBLISH -> subscriber thread", hops),
                ("sum (one commit + one hop)",
                 ms(statistics.median(bare) + statistics.median(hops)), "", "", ""),
            ],
        )  # fmt: skip
    finally:
        clean_up(worker, [ns, ns_poll], schema)


if __name__ == "__main__":
    main()
