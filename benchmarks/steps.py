"""Durable step overhead, and 1-step workflow throughput through Celery.

    python benchmarks/steps.py

(a) ms per durable step (300 steps in one workflow run inline in this
    process) minus a plain call, next to one bare INSERT + COMMIT on a plain
    psycopg connection.  Target: step / bare commit <= 1.25x.
(b) 1-step workflows/s vs plain Celery tasks/s on the same `celery worker`
    (prefork, concurrency 2, Redis broker), with the step's checkpoint
    committed on its own (the default) and with defer_checkpoint=True.
    Target: ratio >= 0.8x.
(c) where a worker child's time goes: the same 1-step workflows run one
    after the other in this process (the task body without Celery), next to
    a bare INSERT + COMMIT, and the Celery cycle per task and child that
    (b)'s rates imply.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._app import build  # noqa: E402
from benchmarks._common import (  # noqa: E402
    BareInsert,
    Worker,
    app_env,
    clean_up,
    machine,
    ms,
    new_schema,
    pct,
    sql,
    table,
)

STEPS = int(os.environ.get("BENCH_STEPS", 300))
N = int(os.environ.get("BENCH_TASKS", 1000))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", 2))


def step_overhead(ns: SimpleNamespace, schema: str) -> dict[str, list[float]]:
    """Seconds per durable step, per plain call and per bare INSERT (+COMMIT),
    interleaved in one loop inside one workflow run inline in this process,
    so that all of them see the same machine at the same moment."""
    durable, step, trivial = ns.durable, ns.step, ns.trivial
    bare, bare_auto = BareInsert(schema), BareInsert(schema, autocommit=True)

    @durable.workflow(name="bench.interleaved")
    def interleaved(n: int) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"step": [], "plain": [], "bare": [], "bare_auto": []}
        for i in range(n):
            out["bare"].append(bare())
            t0 = time.perf_counter()
            step(i)
            t1 = time.perf_counter()
            trivial(i)
            out["plain"].append(time.perf_counter() - t1)
            out["step"].append(t1 - t0)
            out["bare_auto"].append(bare_auto())
        return out

    try:
        interleaved(20)  # warm: engine, pool, statement caches, prepared statements
        return interleaved(STEPS)
    finally:
        bare.close()
        bare_auto.close()


def drain(
    ns: SimpleNamespace, hostname: str, done: Callable[[], object], timeout: float = 90.0
) -> None:
    """Let the worker consume ns.queue until ``done()``."""
    app, queue = ns.app, ns.queue
    app.control.add_consumer(queue, destination=[hostname], reply=True, timeout=5)
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the worker")
        time.sleep(0.05)  # completion times come from the records, not from here
    app.control.cancel_consumer(queue, destination=[hostname], reply=True, timeout=5)


def throughput(ns: SimpleNamespace, schema: str, worker: Worker) -> dict[str, float]:
    """N queued with the worker not consuming them, then consumed: rate =
    (N - 1) / (last completion - first completion), so neither the producer
    nor the consumer's start-up (kombu's BRPOP picks a new queue up only after
    its current poll) is counted."""
    r, counter = ns.redis, ns.counter
    host = worker.hostname

    def workflows_done(prefix: str) -> tuple[int, float, float]:
        n, first, last = sql(
            "SELECT count(*), extract(epoch from min(updated_at))::float8, "
            "extract(epoch from max(updated_at))::float8 "
            f'FROM "{schema}".workflows WHERE status = %s AND id LIKE %s',
            "SUCCESS", prefix + "%",
        )[0]  # fmt: skip
        return n, first or 0.0, last or 0.0

    # warm both worker children (connections, imports) with every kind
    for i in range(20):
        ns.plain.delay(i, 20)
        ns.one_step.start(i, workflow_id=f"warm-{i}")
        ns.one_deferred_step.start(i, workflow_id=f"warm-d-{i}")
    drain(ns, host, lambda: int(r.get(counter) or 0) >= 20 and workflows_done("warm-")[0] >= 40)
    r.delete(counter, f"{counter}:first", f"{counter}:last")

    t = time.perf_counter()
    for i in range(N):
        ns.plain.delay(i, N)
    plain_enqueue = N / (time.perf_counter() - t)
    drain(ns, host, lambda: r.get(f"{counter}:last") is not None)
    first, last = (float(r.get(f"{counter}:{k}")) for k in ("first", "last"))
    plain_rate = (N - 1) / (last - first)

    t = time.perf_counter()
    for i in range(N):
        ns.one_step.start(i, workflow_id=f"b-{i}")
    wf_start = N / (time.perf_counter() - t)
    drain(ns, host, lambda: workflows_done("b-")[0] >= N)
    _, first, last = workflows_done("b-")
    wf_rate = (N - 1) / (last - first)

    for i in range(N):
        ns.one_deferred_step.start(i, workflow_id=f"d-{i}")
    drain(ns, host, lambda: workflows_done("d-")[0] >= N)
    _, first, last = workflows_done("d-")
    deferred_rate = (N - 1) / (last - first)
    return {"plain": plain_rate, "wf": wf_rate, "deferred": deferred_rate,
            "plain_enq": plain_enqueue, "wf_start": wf_start}  # fmt: skip


def in_process(ns: SimpleNamespace, schema: str, n: int = 500) -> dict[str, float]:
    """Seconds per 1-step workflow run in this process, one after the other:
    the task body (claim, step, final status, done hint) without Celery."""
    bare = BareInsert(schema)
    out: dict[str, list[float]] = {"wf": [], "deferred": [], "bare": []}
    try:
        for kind, wf in (("wf", ns.one_step), ("deferred", ns.one_deferred_step)):
            ids = [f"inproc-{kind}-{i}" for i in range(n)]
            for i, wid in enumerate(ids):
                wf.start(i, workflow_id=wid)  # queued: no worker consumes this queue now
            for wid in ids:
                t = time.perf_counter()
                wf._run(wid)  # what the Celery task runs
                out[kind].append(time.perf_counter() - t)
                out["bare"].append(bare())
    finally:
        bare.close()
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    schema = new_schema()
    env = app_env(schema, f"{schema}_q")
    ns = build(env)
    worker = None
    try:
        ns.durable.migrate()
        print(f"dbos_celery step benchmark (schema {schema})", flush=True)
        a = step_overhead(ns, schema)
        ns.durable.close()

        worker = Worker(env, f"{schema}_park", CONCURRENCY).wait_ready(ns.app)
        rates = throughput(ns, schema, worker)
        inproc = in_process(ns, schema)

        step, plain, bare, auto = a["step"], a["plain"], a["bare"], a["bare_auto"]
        over = [x - y for x, y in zip(step, plain, strict=True)]
        table("machine", machine())
        table(
            f"(a) one durable step ({STEPS} in one workflow, inline) vs a bare commit, interleaved",
            [
                ("", "p50", "mean", "p99"),
                *(
                    (name, ms(pct(v, 50)), ms(statistics.fmean(v)), ms(pct(v, 99)))
                    for name, v in [
                        ("durable step (wall)", step),
                        ("plain call", plain),
                        ("step overhead = step - plain", over),
                        ("bare INSERT+COMMIT (psycopg)", bare),
                        ("bare INSERT, autocommit (info)", auto),
                    ]
                ),
                ("ratio overhead / bare commit", f"{pct(over, 50) / pct(bare, 50):.2f}x",
                 f"{statistics.fmean(over) / statistics.fmean(bare):.2f}x", "target <= 1.25x"),
            ],
        )  # fmt: skip
        table(
            f"(b) throughput, one celery worker (prefork, -c {CONCURRENCY}, Redis broker), N={N}",
            [
                ("plain Celery tasks", f"{rates['plain']:.0f} /s"),
                ("1-step workflows", f"{rates['wf']:.0f} /s"),
                ("ratio workflows / tasks", f"{rates['wf'] / rates['plain']:.2f}x"),
                ("1-step, defer_checkpoint=True", f"{rates['deferred']:.0f} /s"),
                ("ratio deferred / tasks", f"{rates['deferred'] / rates['plain']:.2f}x"),
                ("target", ">= 0.8x"),
                ("producer: task.delay()", f"{rates['plain_enq']:.0f} /s  (info)"),
                ("producer: workflow.start()", f"{rates['wf_start']:.0f} /s  (info)"),
            ],
        )  # fmt: skip
        cycle = {k: CONCURRENCY / rates[k] for k in ("plain", "wf", "deferred")}
        table(
            "(c) a worker child's time per task (p50), in this process and as (b)'s rates imply",
            [
                ("1-step workflow, run here (no Celery)", ms(inproc["wf"])),
                ("  with defer_checkpoint=True", ms(inproc["deferred"])),
                ("bare INSERT+COMMIT, same loop", ms(inproc["bare"])),
                ("cycle per task and child: plain task", ms(cycle["plain"])),
                ("  1-step workflow", ms(cycle["wf"])),
                ("  1-step, defer_checkpoint=True", ms(cycle["deferred"])),
                ("  for 0.8x: at most", ms(cycle["plain"] / 0.8)),
            ],
        )  # fmt: skip
    finally:
        ns.redis.delete(*(f"{ns.counter}{k}" for k in ("", ":first", ":last")))
        clean_up(worker, [ns], schema, f"{schema}_park")


if __name__ == "__main__":
    main()
