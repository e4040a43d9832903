"""The recovery sweep and the heartbeat on big tables.

    python benchmarks/sweep.py     # BENCH_FINISHED=1000000 BENCH_LIVE=100000 (~2 min)

The workflows table is filled straight with BENCH_FINISHED finished rows
(a step each, an event for one in ten) and BENCH_LIVE live ones (half
parked with a wake time an hour away and a key nothing has written, a
quarter ENQUEUED and received by a live worker,
a quarter PENDING under a live worker), then ANALYZEd. Printed: every
statement of one sweep pass and of the heartbeats with its plan (the scans
it uses: an index, or a sequential scan) and its time (EXPLAIN ANALYZE,
rolled back), the wall time of whole sweep passes, and the statements per
second one worker sends at default settings.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
from celery import Celery  # noqa: E402

from benchmarks._common import (  # noqa: E402
    DATABASE_URL,
    drop_schema,
    explain,
    machine,
    ms,
    new_schema,
    sql,
    table,
)
from dbos_celery import Durable  # noqa: E402
from dbos_celery.keys import sweep_lock  # noqa: E402
from dbos_celery.store import messages, workers  # noqa: E402

FINISHED = int(os.environ.get("BENCH_FINISHED", 1_000_000))
LIVE = int(os.environ.get("BENCH_LIVE", 100_000))
PASSES = 20


def fill(schema: str) -> None:
    s = f'"{schema}"'
    cols = "id, name, status, inputs, executor_id, reserved_by, wake_at, waiting_for, queue"
    sql(f"INSERT INTO {s}.workers (id, hostname, pid) VALUES ('live-worker', 'bench', 1)")
    sql(f"INSERT INTO {s}.workflows ({cols}) SELECT 'done-' || i, 'bench.wf', "
        f"(ARRAY['SUCCESS','ERROR','CANCELLED'])[1 + i %% 3], '\\x00', NULL, NULL, NULL, NULL, "
        f"'q' FROM generate_series(1, {FINISHED}) i")  # fmt: skip
    parked, rest = LIVE // 2, LIVE // 4
    sql(f"INSERT INTO {s}.workflows ({cols}) SELECT 'park-' || i, 'bench.wf', 'WAITING', "
        f"'\\x00', NULL, NULL, now() + interval '1 hour', 'm:park-' || i || ':t', 'q' "
        f"FROM generate_series(1, {parked}) i")  # fmt: skip
    sql(
        f"INSERT INTO {s}.workflows ({cols}) SELECT 'enq-' || i, 'bench.wf', 'ENQUEUED', "
        f"'\\x00', NULL, 'live-worker', NULL, NULL, 'q' FROM generate_series(1, {rest}) i"
    )
    sql(
        f"INSERT INTO {s}.workflows ({cols}) SELECT 'run-' || i, 'bench.wf', 'PENDING', "
        f"'\\x00', 'live-worker', NULL, NULL, NULL, 'q' FROM generate_series(1, {rest}) i"
    )
    # a step for each finished workflow, an event for one in ten
    sql(f"INSERT INTO {s}.steps (workflow_id, seq, name, output) SELECT 'done-' || i, 0, "
        f"'bench.step', '\\x00' FROM generate_series(1, {FINISHED}) i")  # fmt: skip
    sql(f"INSERT INTO {s}.events (workflow_id, key, value) SELECT 'done-' || i, 'stage', "
        f"'\\x00' FROM generate_series(1, {FINISHED}, 10) i")  # fmt: skip
    sql(f"VACUUM ANALYZE {s}.workflows, {s}.steps, {s}.events")


def main() -> None:
    schema = new_schema()
    d = Durable(Celery("bench"), DATABASE_URL, schema=schema)
    try:
        d.migrate()
        print(f"dbos_celery sweep benchmark (schema {schema}): {FINISHED} finished, "
              f"{LIVE} live", flush=True)  # fmt: skip
        t = time.perf_counter()
        fill(schema)
        print(f"  filled in {time.perf_counter() - t:.0f} s", flush=True)
        s = d.services.settings
        live = {"timeout": s.worker_timeout}
        grace = {"grace": s.enqueued_timeout}
        statements = [
            ("sweep: lock", workers._SWEEP_LOCK, {"lock": sweep_lock(schema)}),
            ("sweep: cancel past deadline", workers._CANCEL_EXPIRED, {}),
            ("sweep: wake parked (due)", workers._WAKE_DUE, {}),
            ("sweep: parked page (500)", workers._PARKED_PAGE, {"after": "", "n": 500}),
            ("sweep: wake ready in a page", workers._WAKE_READY,
             {"ids": [f"park-{i}" for i in range(1, 501)]}),
            ("sweep: dead workers", workers._DEAD, live),
            ("sweep: recover unowned (killed)", workers._RECOVER_UNOWNED,
             {**live, "max_attempts": s.max_recovery_attempts}),
            ("when one died: its running rows", workers._RECOVER_DEAD,
             {**live, "max_attempts": s.max_recovery_attempts, "dead": ["gone"]}),
            ("when one died: its prefetched rows", workers._RECOVER_PREFETCHED,
             {"dead": ["gone"]}),
            ("full pass (1 in 20): orphaned rows", workers._RECOVER_ORPHANED,
             {**live, "max_attempts": s.max_recovery_attempts}),
            ("full pass (1 in 20): orphaned prefetched", workers._RECOVER_ORPHANED_PREFETCHED,
             live),
            ("broker unreachable: re-publish by age", workers._REPUBLISH_UNRECEIVED,
             {**grace, "queue": "q"}),
            ("sweep: forget old workers", workers._FORGET_WORKERS, {}),
            ("sweep: unreceived queues", workers._UNRECEIVED_QUEUES, grace),
            ("sweep: re-publish drained", workers._REPUBLISH_DRAINED,
             {**grace, "queue": "q", "age": 2.0}),
            ("every minute: prune call keys", messages._PRUNE_CALL_KEYS, {"before": "0"}),
            ("heartbeat (thread)", workers._HEARTBEAT,
             {"worker": "live-worker", "hostname": "bench", "pid": 1}),
            ("heartbeat (beater)", workers.BEAT, {"ids": ["live-worker"]}),
        ]  # fmt: skip

        def beat() -> None:  # the live rows' worker stays alive
            sql(f'UPDATE "{schema}".workers SET last_heartbeat = now()')

        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            for _ in range(2):  # warm the cache
                beat()
                rows = [
                    (name, *explain(conn, d, stmt, params)) for name, stmt, params in statements
                ]
        passes = []
        beat()
        first = time.perf_counter()
        d.sweep()  # the first pass is a full one
        first = time.perf_counter() - first
        for _ in range(PASSES):
            beat()
            t = time.perf_counter()
            d.sweep()
            passes.append(time.perf_counter() - t)
        table("machine", machine())
        table(f"one sweep pass and the heartbeats ({FINISHED} finished + {LIVE} live rows)", [
            ("statement", "scans", "time (EXPLAIN ANALYZE)"),
            *((name, scans, ms(sec)) for name, scans, sec in rows),
        ])  # fmt: skip
        per_pass = len([r for r in statements if r[0].startswith("sweep")])
        table("whole passes (Durable.sweep, this process)", [
            ("first (a full one)", ms(first)),
            ("p50", ms(statistics.median(passes))),
            ("max (one in 20 is full)", ms(max(passes))),
            ("statements per pass", f"about {per_pass} (one more per drained queue)"),
            ("one worker, default settings", f"sweep every {s.sweep_interval:g} s: "
             f"{per_pass / s.sweep_interval:.0f} statements/s; heartbeats "
             f"{2 / s.heartbeat_interval:.0f}/s (thread + beater)"),
        ])  # fmt: skip
    finally:
        d.close()
        drop_schema(schema)


if __name__ == "__main__":
    main()
