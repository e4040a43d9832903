"""Retention: what garbage_collect frees and what it costs, and what the
workflows that run meanwhile see.

    python benchmarks/gc.py        # BENCH_GC_WORKFLOWS=100000 (~1-2 min)

N finished workflows are written straight into the tables (3 steps, an
event each; a leftover message and its idempotency key for one in ten),
last updated two days ago. The table prints rows and bytes before, after
the collection, and after a plain VACUUM (which makes the space reusable
but returns only the end of each file to the system), the seconds per
10,000 deleted, and the latency of durable steps (one workflow run inline
in this process) next to a bare INSERT + COMMIT, before and while the
collection runs, and of send -> recv wakeups (messages 5 ms apart to a
workflow waiting on a `celery worker`, prefork -c 2), before and during.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

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
from benchmarks.messaging import wakeup_latencies  # noqa: E402
from dbos_celery import retention  # noqa: E402

N = int(os.environ.get("BENCH_GC_WORKFLOWS", 100_000))
TABLES = ("workflows", "steps", "events", "messages", "send_keys")


def fill(schema: str, n: int) -> None:
    """``n`` finished workflows with their rows, two days old."""
    s = f'"{schema}"'
    old = "now() - interval '2 days'"
    sql(f"INSERT INTO {s}.workflows (id, name, status, inputs, output, created_at, updated_at) "
        f"SELECT 'wf-' || i, 'bench.gc', 'SUCCESS', convert_to('[[' || i || ', \"order\"], {{}}]', "
        f"'UTF8'), convert_to('{{\"total\": ' || i || '}}', 'UTF8'), {old}, {old} "
        f"FROM generate_series(1, {n}) i")  # fmt: skip
    sql(f"INSERT INTO {s}.steps (workflow_id, seq, name, output) SELECT 'wf-' || i, seq, "
        f"'bench.step', convert_to('{{\"step\": ' || seq || ', \"ok\": true}}', 'UTF8') "
        f"FROM generate_series(1, {n}) i, generate_series(0, 2) seq")  # fmt: skip
    sql(f"INSERT INTO {s}.events (workflow_id, key, value) SELECT 'wf-' || i, 'stage', "
        f"convert_to('\"done\"', 'UTF8') FROM generate_series(1, {n}) i")  # fmt: skip
    sql(f"INSERT INTO {s}.messages (destination_id, topic, payload) SELECT 'wf-' || i, '', "
        f"convert_to('\"late\"', 'UTF8') FROM generate_series(1, {n}, 10) i")  # fmt: skip
    sql(f"INSERT INTO {s}.send_keys (destination_id, idempotency_key) SELECT 'wf-' || i, "
        f"'key-' || i FROM generate_series(1, {n}, 10) i")  # fmt: skip
    sql(f"ANALYZE {s}.workflows")


def sizes(schema: str) -> dict[str, tuple[int, int]]:
    """(rows, bytes with indexes) per table."""
    return {
        t: (sql(f'SELECT count(*) FROM "{schema}".{t}')[0][0],
            sql(f"SELECT pg_total_relation_size('\"{schema}\".{t}')")[0][0])
        for t in TABLES
    }  # fmt: skip


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def latencies(ns: object, schema: str, until: threading.Event | None, n: int) -> tuple:
    """Seconds per durable step and per bare commit, interleaved, in one
    workflow run inline: ``n`` of each, or as many as fit until ``until``."""
    durable, step = ns.durable, ns.step  # type: ignore[attr-defined]
    bare = BareInsert(schema)

    @durable.workflow(name=f"bench.gc_probe_{time.monotonic_ns()}")
    def probe() -> tuple[list[float], list[float]]:
        steps, bares = [], []
        i = 0
        while (until is None and i < n) or (until is not None and not until.is_set()):
            bares.append(bare())
            t0 = time.perf_counter()
            step(i)
            steps.append(time.perf_counter() - t0)
            i += 1
            time.sleep(0.005)  # spaced, as users see it
        return steps, bares

    try:
        return probe()
    finally:
        bare.close()


def main() -> None:
    schema = new_schema()
    env = app_env(schema, f"{schema}_q")
    ns = build(env)
    worker = None
    try:
        ns.durable.migrate()
        print(f"dbos_celery retention benchmark (schema {schema}, {N} workflows)", flush=True)
        t0 = time.perf_counter()
        fill(schema, N)
        print(f"  filled in {time.perf_counter() - t0:.1f} s", flush=True)
        before = sizes(schema)
        quiet_steps, quiet_bares = latencies(ns, schema, None, 300)
        worker = Worker(env, ns.queue).wait_ready(ns.app)
        quiet_wakeups = wakeup_latencies(ns, schema, "recv-quiet", 200, lambda: 0.005)

        done = threading.Event()
        marks: list[tuple[float, int]] = []
        result: dict[str, float] = {}

        def collect() -> None:
            start = time.perf_counter()
            got = retention.garbage_collect(
                ns.durable.services, timedelta(days=1),
                progress=lambda total: marks.append((time.perf_counter() - start, total)),
            )  # fmt: skip
            result["deleted"], result["seconds"] = got, time.perf_counter() - start
            done.set()

        gc = threading.Thread(target=collect)
        gc.start()
        busy_wakeups = wakeup_latencies(ns, schema, "recv-busy", 200, lambda: 0.005)
        busy_steps, busy_bares = latencies(ns, schema, done, 0)
        gc.join()
        after = sizes(schema)
        sql(f'VACUUM "{schema}".workflows, "{schema}".steps, "{schema}".events, '
            f'"{schema}".messages, "{schema}".send_keys')  # fmt: skip
        vacuumed = sizes(schema)

        table("machine", machine())
        table(f"rows and bytes (with indexes), {N} finished workflows", [
            ("table", "rows before", "bytes before", "rows after", "bytes after",
             "bytes after VACUUM"),
            *((t, str(before[t][0]), mib(before[t][1]), str(after[t][0]), mib(after[t][1]),
               mib(vacuumed[t][1])) for t in TABLES),
        ])  # fmt: skip
        per = result["seconds"] / (result["deleted"] / 10_000) if result["deleted"] else 0.0
        table("garbage_collect (batches of 1,000, one transaction each)", [
            ("deleted", f"{result['deleted']:.0f} workflows"),
            ("wall time", f"{result['seconds']:.1f} s"),
            ("per 10,000 deleted", f"{per:.2f} s"),
            ("bytes per workflow (before)", f"{sum(b for _, b in before.values()) / N:.0f} B"),
        ])  # fmt: skip
        table("latency seen meanwhile (steps 5 ms apart, inline; messages 5 ms apart)", [
            ("", "p50", "p99", "n"),
            ("durable step, before", ms(pct(quiet_steps, 50)), ms(pct(quiet_steps, 99)),
             str(len(quiet_steps))),
            ("durable step, during gc", ms(pct(busy_steps, 50)), ms(pct(busy_steps, 99)),
             str(len(busy_steps))),
            ("bare INSERT+COMMIT, before", ms(pct(quiet_bares, 50)), ms(pct(quiet_bares, 99)),
             str(len(quiet_bares))),
            ("bare INSERT+COMMIT, during gc", ms(pct(busy_bares, 50)), ms(pct(busy_bares, 99)),
             str(len(busy_bares))),
            ("send -> recv wakeup, before", ms(pct(quiet_wakeups, 50)),
             ms(pct(quiet_wakeups, 99)), str(len(quiet_wakeups))),
            ("send -> recv wakeup, during gc", ms(pct(busy_wakeups, 50)),
             ms(pct(busy_wakeups, 99)), str(len(busy_wakeups))),
        ])  # fmt: skip
    finally:
        clean_up(worker, [ns], schema)


if __name__ == "__main__":
    main()
