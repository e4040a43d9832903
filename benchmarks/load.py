"""Sustained mixed load: workflows/s, messages/s, end-to-end latency, and
Postgres footprint per workflow, next to plain Celery task throughput.

    python benchmarks/load.py                    # default: 400 workflows (< 1 min)
    python benchmarks/load.py --workflows 5000   # longer

One prefork ``celery worker -c 2`` subprocess runs ``load.wf`` (3 steps, 2
recvs of producer messages, 1 send to the next workflow, 1 recv of the
previous one's: benchmarks/_load_app.py). This process starts the
workflows from one thread while a producer thread sends each workflow its two
messages; latency is start -> SUCCESS (the row's created_at -> updated_at).
Baseline in the same run, same worker: plain Celery tasks/s.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
from benchmarks._load_app import build, wid  # noqa: E402


def plain_rate(ns: object, n: int) -> float:
    """Plain Celery tasks/s on the same worker: first to n-th completion."""
    r, counter, plain = ns.redis, ns.counter, ns.plain  # type: ignore[attr-defined]
    r.delete(counter, f"{counter}:first", f"{counter}:last")
    for i in range(n):
        plain.delay(i, n)
    deadline = time.monotonic() + 120
    while not r.get(f"{counter}:last"):
        if time.monotonic() > deadline:
            raise RuntimeError("plain tasks did not finish")
        time.sleep(0.05)
    first, last = float(r.get(f"{counter}:first")), float(r.get(f"{counter}:last"))
    return (n - 1) / (last - first)


def run_load(ns: object, schema: str, n: int) -> dict[str, object]:
    d, wf = ns.durable, ns.wf  # type: ignore[attr-defined]
    started = threading.Event()
    sent = [0]

    def produce() -> None:
        started.wait()
        for i in range(n):
            for k in (0, 1):
                while True:
                    try:
                        d.send(wid(i, n), k, "p", idempotency_key=f"{i}:{k}")
                        break
                    except Exception:  # not started yet: NonExistentWorkflowError
                        time.sleep(0.01)
                sent[0] += 1

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    t0 = time.time()
    for i in range(n):
        wf.start(i, n, workflow_id=wid(i, n))
        if i == 0:
            started.set()
    producer.join()
    deadline = time.monotonic() + max(120, n / 5)
    q = f'SELECT count(*) FROM "{schema}".workflows WHERE status = %s'
    while sql(q, "SUCCESS")[0][0] < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"load did not finish: {sql(q, 'SUCCESS')[0][0]} of {n}")
        time.sleep(0.2)
    rows = sql(
        "SELECT extract(epoch from created_at), extract(epoch from updated_at) "
        f'FROM "{schema}".workflows'
    )
    first = min(float(c) for c, _ in rows)
    last = max(float(u) for _, u in rows)
    return {
        "wall": last - min(first, t0),
        "latency": [float(u) - float(c) for c, u in rows],
        "messages": sent[0] + n,  # producer messages + workflow-to-workflow
    }


def footprint(schema: str, n: int) -> list[tuple[str, ...]]:
    out = []
    tables = sql("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", schema)
    total = 0
    for (t,) in tables:
        rows = sql(f'SELECT count(*) FROM "{schema}"."{t}"')[0][0]
        size = sql("SELECT pg_total_relation_size(%s)", f'"{schema}"."{t}"')[0][0]
        total += size
        out.append((t, f"{rows / n:.2f}", f"{size / n:.0f} B"))
    out.append(("all tables (incl. indexes, TOAST)", "", f"{total / n:.0f} B"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="sustained mixed load")
    p.add_argument("--workflows", type=int, default=int(os.environ.get("BENCH_WORKFLOWS", 400)))
    p.add_argument("--plain", type=int, default=2000, help="plain tasks for the baseline")
    a = p.parse_args()
    schema = new_schema()
    env = app_env(schema, f"{schema}_q")
    ns = build(env)
    worker = None
    ops = 7 * a.workflows  # steps + recvs + sends
    try:
        ns.durable.migrate()
        print(f"dbos_celery load benchmark (schema {schema}, {a.workflows} workflows)", flush=True)
        worker = Worker(env, ns.queue, app="benchmarks._load_app").wait_ready(ns.app)
        baseline = plain_rate(ns, a.plain)
        got = run_load(ns, schema, a.workflows)
        wall, lat = float(got["wall"]), list(got["latency"])  # type: ignore[call-overload]
        msgs = int(got["messages"])  # type: ignore[call-overload]
        p50, p99, mean = summary(lat)
        table("machine", machine())
        table(
            "sustained mixed load, celery worker (prefork, -c 2)",
            [
                ("", "value"),
                ("workflows (3 steps, 3 recvs, 1 send each)", str(a.workflows)),
                ("workflows/s completed", f"{a.workflows / wall:.1f} /s"),
                ("messages/s consumed", f"{msgs / wall:.1f} /s"),
                ("durable operations/s (steps + recvs + sends)", f"{ops / wall:.0f} /s"),
                ("latency start -> SUCCESS p50 / p99 / mean",
                 f"{ms(p50)} / {ms(p99)} / {ms(mean)}"),
                ("wall time", f"{wall:.1f} s"),
                ("baseline: plain Celery tasks/s, same worker", f"{baseline:.0f} /s"),
            ],
        )  # fmt: skip
        table(
            "Postgres per workflow", [("table", "rows", "bytes"), *footprint(schema, a.workflows)]
        )
    finally:
        clean_up(worker, [ns], schema)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    main()
