"""The embedded default (a SQLite file, no servers): step cost, send -> recv
wakeup and workflow throughput, each next to its floor in the same run.

    python benchmarks/sqlite.py

(a) ms per durable step (one workflow run inline) vs one bare sqlite3
    INSERT + COMMIT on the same kind of file (WAL, synchronous=FULL).
(b) send -> recv wakeup, producer and workflow in one process (in-process
    wakeups, an in-process thread-pool worker): p50 / p99.
(c) 1-step workflows/s vs plain Celery tasks/s through the same in-process
    worker on the memory broker (what `python -m examples.checkout` uses).
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from celery import Celery  # noqa: E402
from celery.contrib.testing.worker import start_worker  # noqa: E402

from benchmarks._common import machine, ms, pct, table  # noqa: E402
from dbos_celery import Durable  # noqa: E402

STEPS = int(os.environ.get("BENCH_STEPS", 300))
MESSAGES = int(os.environ.get("BENCH_MESSAGES", 300))
N = int(os.environ.get("BENCH_TASKS", 300))


class BareSqlite:
    """One INSERT + COMMIT on a file set up as the library sets its own."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE bare (id integer primary key, v blob)")

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("INSERT INTO bare (v) VALUES (?)", (b"x" * 16,))
        self.conn.execute("COMMIT")
        return time.perf_counter() - t0


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_sqlite_"))
    app = Celery("bench_sqlite", broker="memory://")
    app.conf.broker_transport_options = {"polling_interval": 0.01}
    app.conf.result_backend = "cache+memory://"  # for the plain tasks' results
    durable = Durable(app, f"sqlite:///{tmp / 'bench.db'}")
    bare = BareSqlite(tmp / "bare.db")

    @durable.step(name="bench.step")
    def step(i: int) -> int:
        return i

    @durable.workflow(name="bench.steps")
    def interleaved(n: int) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"step": [], "bare": []}
        for i in range(n):
            out["bare"].append(bare())
            t0 = time.perf_counter()
            step(i)
            out["step"].append(time.perf_counter() - t0)
        return out

    @durable.workflow(name="bench.receiver")
    def receiver(n: int) -> list[float]:
        hops = []
        for _ in range(n):
            sent = float(durable.recv("t", timeout=30))
            hops.append(time.perf_counter() - sent)
        return hops

    @durable.workflow(name="bench.one")
    def one(i: int) -> int:
        return int(step(i))

    @app.task(name="bench.plain")
    def plain(i: int) -> int:
        return i

    try:
        interleaved(20)
        got = interleaved(STEPS)
        step_p50, bare_p50 = statistics.median(got["step"]), statistics.median(got["bare"])
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
            handle = receiver.start(MESSAGES, workflow_id="receiver")
            time.sleep(0.5)
            for _ in range(MESSAGES):
                durable.send("receiver", repr(time.perf_counter()), topic="t")
                time.sleep(0.005)
            hops = handle.result(timeout=60)

            t0 = time.perf_counter()
            results = [plain.delay(i) for i in range(N)]
            deadline = time.monotonic() + 120
            for r in results:
                r.get(timeout=max(0.1, deadline - time.monotonic()))
            plain_rate = N / (time.perf_counter() - t0)

            t0 = time.perf_counter()
            handles = [one.start(i) for i in range(N)]
            for h in handles:
                h.result(timeout=120)
            wf_rate = N / (time.perf_counter() - t0)
    finally:
        durable.close()
        bare.conn.close()

    table("machine", machine())
    table(
        "SQLite (WAL, synchronous=FULL), one process",
        [
            ("durable step p50", ms(step_p50)),
            ("bare INSERT + COMMIT p50", ms(bare_p50)),
            ("step / bare", f"{step_p50 / bare_p50:.2f}x"),
            ("send -> recv wakeup p50", ms(pct(hops, 50))),
            ("send -> recv wakeup p99", ms(pct(hops, 99))),
            ("1-step workflows/s (in-process worker)", f"{wf_rate:.0f}"),
            ("plain tasks/s (same worker)", f"{plain_rate:.0f}"),
            ("ratio", f"{wf_rate / plain_rate:.2f}x"),
        ],
    )


if __name__ == "__main__":
    main()
