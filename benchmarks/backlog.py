"""A fleet restart with a backlog: N tasks queued while no worker consumes
them, for longer than enqueued_timeout, then consumed.

    python benchmarks/backlog.py       # BENCH_BACKLOG=20000 (~2-3 min)

One `celery worker` (prefork, -c 2, Redis broker) is up but not consuming
the queue while N plain Celery tasks, then N one-step workflows, are queued
and left BENCH_BACKLOG_WAIT seconds (6 s, past enqueued_timeout=5 s set
for this run); then it consumes them. Printed: throughput of each (N - 1
over first to last completion), how many workflows the recovery sweep
published again while they were only queued (each one is a duplicate
delivery), the duplicate messages still queued when all were done, and the
workflows table's size and dead tuples.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._app import build  # noqa: E402
from benchmarks._common import (  # noqa: E402
    REDIS_URL,
    Worker,
    app_env,
    clean_up,
    machine,
    new_schema,
    sql,
    table,
)
from benchmarks.steps import drain  # noqa: E402

N = int(os.environ.get("BENCH_BACKLOG", 20_000))
WAIT = float(os.environ.get("BENCH_BACKLOG_WAIT", 6.0))
ENQUEUED_TIMEOUT = "5"


def main() -> None:
    import redis

    schema = new_schema()
    env = {**app_env(schema, f"{schema}_q"), "BENCH_ENQUEUED_TIMEOUT": ENQUEUED_TIMEOUT}
    ns = build(env)
    worker = None
    r = redis.Redis.from_url(REDIS_URL)
    counter = ns.counter
    try:
        ns.durable.migrate()
        print(f"dbos_celery backlog benchmark (schema {schema}, N={N})", flush=True)
        worker = Worker(env, f"{schema}_idle", 2).wait_ready(ns.app)
        host = worker.hostname

        for i in range(N):
            ns.plain.delay(i, N)
        time.sleep(WAIT)
        drain(ns, host, lambda: r.get(f"{counter}:last") is not None, timeout=600)
        first, last = (float(r.get(f"{counter}:{k}")) for k in ("first", "last"))
        plain_rate = (N - 1) / (last - first)
        print(f"  plain tasks: {plain_rate:.0f}/s", flush=True)

        t = time.perf_counter()
        for i in range(N):
            ns.one_step.start(i, workflow_id=f"b-{i}")
        start_rate = N / (time.perf_counter() - t)
        time.sleep(WAIT)
        q = f'"{schema}".workflows'

        def done() -> bool:
            return bool(sql(f"SELECT count(*) >= %s FROM {q} WHERE status = 'SUCCESS'", N)[0][0])

        drain(ns, host, done, timeout=900)
        n, first_wf, last_wf, republished, extra = sql(
            "SELECT count(*), extract(epoch from min(updated_at))::float8, "
            "extract(epoch from max(updated_at))::float8, "
            f"count(*) FILTER (WHERE publish_count > 0), sum(publish_count) FROM {q}"
        )[0]  # fmt: skip
        wf_rate = (N - 1) / (last_wf - first_wf)
        stale = r.llen(ns.queue)
        size, dead = sql(
            f"SELECT pg_total_relation_size('{q}'), n_dead_tup FROM pg_stat_user_tables "
            "WHERE schemaname = %s AND relname = 'workflows'", schema,
        )[0]  # fmt: skip

        table("machine", machine())
        table(
            f"(backlog) {N} queued, left {WAIT:g} s (enqueued_timeout {ENQUEUED_TIMEOUT} s), "
            "then consumed by one worker (prefork, -c 2, Redis broker)",
            [
                ("plain Celery tasks", f"{plain_rate:.0f} /s"),
                ("1-step workflows", f"{wf_rate:.0f} /s"),
                ("ratio workflows / tasks", f"{wf_rate / plain_rate:.2f}x"),
                ("workflows published again", f"{republished} ({100 * republished / N:.1f}%; "
                                              f"{extra or 0} publishes in all)"),
                ("duplicates still queued at the end", str(stale)),
                ("workflows table", f"{size / 2**20:.1f} MiB, {dead} dead tuples"),
                ("producer: workflow.start()", f"{start_rate:.0f} /s  (info)"),
            ],
        )  # fmt: skip
    finally:
        r.delete(counter, f"{counter}:first", f"{counter}:last")
        clean_up(worker, [ns], schema, f"{schema}_idle")


if __name__ == "__main__":
    main()
