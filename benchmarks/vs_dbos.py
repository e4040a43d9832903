"""Side by side with DBOS Transact, same Postgres, same run.

    pip install -e ".[bench]"; python benchmarks/vs_dbos.py

Step overhead: a trivial step inside a workflow, per call (ours inline in
this process, as DBOS runs its workflows; next to a bare INSERT + COMMIT).
send -> recv: a workflow blocked in recv, BENCH_VS_MESSAGES (200) messages
BENCH_VS_SPACING (0.05) s apart, from the send call to recv returning (ours
on a `celery worker`, prefork -c 2, Redis wakeups; DBOS in its own process,
its workflows in threads, LISTEN/NOTIFY wakeups). Printed: p50 / p99 and
DBOS / ours (above 1: we are faster).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from benchmarks._app import build  # noqa: E402
from benchmarks._common import (  # noqa: E402
    DATABASE_URL,
    Worker,
    app_env,
    clean_up,
    machine,
    ms,
    new_schema,
    pct,
    table,
)
from benchmarks.messaging import wakeup_latencies  # noqa: E402
from benchmarks.steps import step_overhead  # noqa: E402

STEPS = int(os.environ.get("BENCH_VS_STEPS", 1000))
MESSAGES = int(os.environ.get("BENCH_VS_MESSAGES", 200))
SPACING = float(os.environ.get("BENCH_VS_SPACING", 0.05))
SYSTEM_DB = "dbos_vs_bench"


def dbos_side() -> dict[str, list[float]]:
    server = DATABASE_URL.rsplit("/", 1)[0]
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SYSTEM_DB} WITH (FORCE)")
    try:
        out = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("_dbos_side.py")),
             f"{server}/{SYSTEM_DB}", str(STEPS), str(MESSAGES), str(SPACING)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"DBOS side failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    finally:
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {SYSTEM_DB} WITH (FORCE)")


def main() -> None:
    schema = new_schema()
    env = app_env(schema, f"{schema}_q")
    ns = build(env)
    worker = None
    try:
        ns.durable.migrate()
        print(f"dbos_celery vs DBOS Transact (steps={STEPS}, messages={MESSAGES}, "
              f"{SPACING * 1000:.0f} ms apart)", flush=True)  # fmt: skip
        ours_steps = step_overhead(ns, schema)
        worker = Worker(env, ns.queue).wait_ready(ns.app)
        ours_wakeup = wakeup_latencies(ns, schema, "vs-recv", MESSAGES, lambda: SPACING)
        worker.stop()
        worker = None
        theirs = dbos_side()
        rows = [("", "dbos_celery p50", "p99", "DBOS p50", "p99", "DBOS / ours (p50)")]
        for title, ours, dbos in (
            ("step overhead (inline workflow)", ours_steps["step"], theirs["step"]),
            (f"send -> recv ({SPACING * 1000:.0f} ms apart)", ours_wakeup, theirs["wakeup"]),
        ):
            rows.append((title, ms(pct(ours, 50)), ms(pct(ours, 99)), ms(pct(dbos, 50)),
                         ms(pct(dbos, 99)), f"{pct(dbos, 50) / pct(ours, 50):.2f}x"))  # fmt: skip
        rows.append(("bare INSERT + COMMIT (floor)", ms(pct(ours_steps["bare"], 50)),
                     ms(pct(ours_steps["bare"], 99)), "", "", ""))  # fmt: skip
        table("dbos_celery vs DBOS Transact, same Postgres", rows)
        table("machine", machine())
    finally:
        clean_up(worker, [ns], schema)


if __name__ == "__main__":
    main()
