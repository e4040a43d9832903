"""Parking: many long-waiting workflows on a worker with two slots.

    python benchmarks/parking.py

A `celery worker` subprocess (prefork, -c 2, ``park_after=0``) runs
``BENCH_PARKED`` (2000) workflows that each wait in ``durable.recv`` with a
10 min timeout: every one parks (row WAITING, no executor, its slot free).
Printed: the time until all are parked, the worker's memory (RSS of the main
process and its pool children) before and with all of them parked, the
Postgres rows and bytes they hold, the time from the first of N sends until
all N have completed, and the park -> wake latency of ``BENCH_LATENCY``
(100) parked workflows sent one message each, 20 ms apart (from the send
call to recv returning in the woken run: the fast path, a Celery publish,
a claim and a replay).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._app import build  # noqa: E402
from benchmarks._common import (  # noqa: E402
    Worker,
    app_env,
    clean_up,
    machine,
    ms,
    new_schema,
    sql,
    summary,
    table,
)

PARKED = int(os.environ.get("BENCH_PARKED", 2000))
LATENCY = int(os.environ.get("BENCH_LATENCY", 100))


def rss_mib(pid: int) -> float:
    """RSS of a process and its children, MiB."""
    total = 0
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def wait_status(schema: str, prefix: str, status: str, n: int, timeout: float) -> float:
    t0 = time.perf_counter()
    while True:
        got = sql(
            f'SELECT count(*) FROM "{schema}".workflows WHERE id LIKE %s AND status = %s',
            prefix + "%",
            status,
        )[0][0]
        if got >= n:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"only {got} of {n} {prefix}* reached {status}")
        time.sleep(0.05)


def run(ns: SimpleNamespace, schema: str, worker: Worker) -> None:
    idle = rss_mib(worker.proc.pid)
    t0 = time.perf_counter()
    for i in range(PARKED):
        ns.parked.start(workflow_id=f"p-{i}")
    started = time.perf_counter() - t0
    parked = wait_status(ns.schema, "p-", "WAITING", PARKED, 60 + PARKED / 10) + started
    held = rss_mib(worker.proc.pid)
    rows = sql(
        f'SELECT (SELECT count(*) FROM "{schema}".workflows), '
        f'(SELECT count(*) FROM "{schema}".steps), '
        f"pg_total_relation_size('\"{schema}\".workflows') "
        f"+ pg_total_relation_size('\"{schema}\".steps')"
    )[0]

    t0 = time.perf_counter()
    for i in range(PARKED):
        ns.durable.send(f"p-{i}", {"t": time.time()})
    sent = time.perf_counter() - t0
    woke = wait_status(ns.schema, "p-", "SUCCESS", PARKED, 60 + PARKED / 10) + sent

    for i in range(LATENCY):
        ns.parked.start(workflow_id=f"l-{i}")
    wait_status(ns.schema, "l-", "WAITING", LATENCY, 60)
    sent_at = []
    for i in range(LATENCY):
        ns.durable.send(f"l-{i}", {"t": time.time()})
        sent_at.append(time.time())
        time.sleep(0.02)
    stamps = [ns.durable.retrieve(f"l-{i}").result(timeout=60) for i in range(LATENCY)]
    hops = {
        "send call (message commit, wake, Celery publish)": [
            s - x["t"] for s, x in zip(sent_at, stamps, strict=True)
        ],
        "send returned -> woken run's body began (broker, pool, claim)": [
            x["entered"] - s for s, x in zip(sent_at, stamps, strict=True)
        ],
        "body began -> recv returned (replay, consume)": [
            x["returned"] - x["entered"] for x in stamps
        ],
    }
    lat = [x["returned"] - x["t"] for x in stamps]

    table("machine", machine())
    table(
        f"{PARKED} workflows parked in recv (10 min timeout) on one worker (prefork, -c 2)",
        [
            ("", "value"),
            ("start all + all parked (WAITING)", f"{parked:.2f} s ({PARKED / parked:.0f} /s)"),
            ("worker RSS, idle (main + 2 children)", f"{idle:.0f} MiB"),
            ("worker RSS, all parked", f"{held:.0f} MiB"),
            ("Postgres rows: workflows / steps", f"{rows[0]} / {rows[1]}"),
            ("Postgres bytes (workflows + steps, with indexes)", f"{rows[2] / 2**20:.1f} MiB"),
            (f"{PARKED} sends (one producer)", f"{sent:.2f} s"),
            ("first send -> all completed", f"{woke:.2f} s ({PARKED / woke:.0f} /s)"),
        ],
    )
    p50, p99, mean = summary(lat)
    table(
        f"park -> wake: send to a parked workflow -> its recv returns ({LATENCY}, 20 ms apart)",
        [
            ("", "p50", "p99", "mean"),
            ("latency (send called -> recv returned)", ms(p50), ms(p99), ms(mean)),
            *((f"  {hop}", *(ms(v) for v in summary(values))) for hop, values in hops.items()),
        ],
    )


def main() -> None:
    schema = new_schema()
    env = {**app_env(schema, f"{schema}_q"), "BENCH_PARK_AFTER": "0"}
    ns = build(env)
    worker = None
    try:
        ns.durable.migrate()
        print(f"dbos_celery parking benchmark (schema {schema})", flush=True)
        worker = Worker(env, ns.queue).wait_ready(ns.app)
        run(ns, schema, worker)
    finally:
        clean_up(worker, [ns], schema)


if __name__ == "__main__":
    main()
