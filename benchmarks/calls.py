"""Overhead of durable.call over a plain ``task.delay().get()``.

    python benchmarks/calls.py

One `celery worker` subprocess (prefork, -c 2) runs a trivial task. From
this process, in one loop inside a workflow run inline here (so both sides
see the same machine at the same moment): one ``durable.call`` of the task
(dispatch record commit, publish, start marker and outcome written by the
worker, Redis wakeup, outcome read), then one ``task.delay(i).get()`` of the
same function through a Redis result backend (the only way plain Celery
gets a result back). The same for ``durable.gather`` of 20 calls against a
``group`` of 20, each result fetched with ``.get()``. Then durable.call inside a workflow running on
the worker (the production path; it has no plain counterpart: Celery
forbids ``.get()`` inside a task). Floor: one bare INSERT + COMMIT.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from celery import group  # noqa: E402

from benchmarks._app import build  # noqa: E402
from benchmarks._common import (  # noqa: E402
    REDIS_URL,
    Worker,
    app_env,
    bare_commits,
    clean_up,
    machine,
    ms,
    new_schema,
    summary,
    table,
)

CALLS = int(os.environ.get("BENCH_CALLS", 300))
GATHERS = int(os.environ.get("BENCH_GATHERS", 30))
WIDTH = int(os.environ.get("BENCH_GATHER_WIDTH", 20))


def interleaved(ns: SimpleNamespace) -> dict[str, list[float]]:
    """Seconds per durable.call and per plain delay().get(), alternating,
    then per gather of WIDTH and per group of WIDTH .get(), alternating."""
    durable, add, add_durable = ns.durable, ns.add, ns.add_durable

    @durable.workflow(name="bench.call_interleaved")
    def loop(n: int, rounds: int) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"call": [], "plain": [], "gather": [], "group": []}
        for i in range(n):
            t0 = time.perf_counter()
            durable.call(add_durable, i)
            t1 = time.perf_counter()
            add.delay(i).get(timeout=30)
            out["call"].append(t1 - t0)
            out["plain"].append(time.perf_counter() - t1)
        for _ in range(rounds):
            t0 = time.perf_counter()
            durable.gather(*[durable.task(add_durable, i) for i in range(WIDTH)])
            t1 = time.perf_counter()
            res = group(add.s(i) for i in range(WIDTH)).apply_async()
            [r.get(timeout=30) for r in res.results]  # GroupResult.get polls every 0.5 s
            out["gather"].append(t1 - t0)
            out["group"].append(time.perf_counter() - t1)
        return out

    loop(20, 3)  # warm: engine, pools, statement caches, both worker children
    return loop(CALLS, GATHERS)


def row(name: str, values: list[float]) -> tuple[str, ...]:
    p50, p99, mean = summary(values)
    return (name, ms(p50), ms(p99), ms(mean), str(len(values)))


def main() -> None:
    schema = new_schema()
    env = {**app_env(schema, f"{schema}_q"), "BENCH_RESULT_BACKEND": REDIS_URL}
    ns = build(env)
    worker = None
    try:
        ns.durable.migrate()
        print(f"dbos_celery call benchmark (schema {schema})", flush=True)
        worker = Worker(env, ns.queue).wait_ready(ns.app)
        a = interleaved(ns)
        on_worker = ns.caller.start(CALLS, workflow_id="caller").result(timeout=120)
        bare = bare_commits(schema, 300)

        call, plain, gather, grp = a["call"], a["plain"], a["gather"], a["group"]
        over = [x - y for x, y in zip(call, plain, strict=True)]
        g_over = [x - y for x, y in zip(gather, grp, strict=True)]
        head = ("", "p50", "p99", "mean", "n")
        table("machine", machine())
        table(
            "(a) one trivial task, from this process (not a worker), alternating",
            [
                head,
                row("durable.call (workflow inline here)", call),
                row("task.delay().get() (Redis result backend)", plain),
                row("overhead = call - plain (paired)", over),
                row("bare INSERT+COMMIT (psycopg), floor", bare),
                ("ratio call / plain",
                 f"{statistics.median(call) / statistics.median(plain):.2f}x", "",
                 f"{statistics.fmean(call) / statistics.fmean(plain):.2f}x"),
                ("overhead in bare commits",
                 f"{statistics.median(over) / statistics.median(bare):.1f}", "",
                 f"{statistics.fmean(over) / statistics.fmean(bare):.1f}"),
            ],
        )  # fmt: skip
        table(
            f"(b) {WIDTH} trivial tasks at once, from this process, alternating",
            [
                head,
                row(f"durable.gather of {WIDTH}", gather),
                row(f"group of {WIDTH}, .get() each", grp),
                row("overhead = gather - group (paired)", g_over),
            ],
        )
        table(
            "(c) durable.call inside a workflow running on the worker (prefork, -c 2)",
            [head, row("durable.call", on_worker)],
        )
    finally:
        clean_up(worker, [ns], schema)


if __name__ == "__main__":
    main()
