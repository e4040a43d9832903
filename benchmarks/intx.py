"""Commit to run: start() inside the caller's transaction (connection=).

    python benchmarks/intx.py       # BENCH_INTX=100 per way, 100 ms apart

A `celery worker` (prefork, -c 2, Redis broker) runs a workflow whose body
notes the time it began. Each way, the producer opens a transaction, inserts
a business row, starts the workflow, commits, and notes the time the commit
returned; printed: commit -> body start, p50 / p99 / mean, for

- plain Celery: the business commit, then ``task.delay()`` (the baseline:
  what ``delay_on_commit`` does; a plain task, no workflow row);
- start() after the commit (two commits: the business one, then ours);
- start(connection=) in one transaction, on a psycopg connection (no commit
  hook: the after-commit thread sees the row on its 2, 4, 8 ... ms probes);
- the same on a SQLAlchemy Connection (no hook either) and Session (its
  after_commit hook kicks the thread at once).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from benchmarks._app import build  # noqa: E402
from benchmarks._common import (  # noqa: E402
    DATABASE_URL,
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

N = int(os.environ.get("BENCH_INTX", 100))
SPACING = float(os.environ.get("BENCH_INTX_SPACING", 0.1))


def main() -> None:
    schema = new_schema()
    env = app_env(schema, f"{schema}_q")
    ns = build(env)
    worker = None
    sa = create_engine(DATABASE_URL.replace("postgresql://", "postgresql+psycopg://"))
    pg = psycopg.connect(DATABASE_URL)
    orders = f'"{schema}".orders'
    try:
        ns.durable.migrate()
        sql(f"CREATE TABLE {orders} (id text PRIMARY KEY)")
        print(f"dbos_celery commit-to-run benchmark (N={N} per way, {SPACING * 1000:.0f} ms "
              "apart, prefork -c 2, Redis broker)", flush=True)  # fmt: skip
        worker = Worker(env, env["BENCH_QUEUE"], 2).wait_ready(ns.app)

        def insert(execute: Callable[..., Any], key: str) -> None:
            execute(f"INSERT INTO {orders} VALUES (%s)", (key,))

        @contextmanager
        def on_psycopg() -> Iterator[tuple[Any, Callable[..., Any]]]:
            with pg.transaction():
                yield pg, pg.execute

        @contextmanager
        def on_connection() -> Iterator[tuple[Any, Callable[..., Any]]]:
            with sa.connect() as conn, conn.begin():
                yield conn, conn.exec_driver_sql

        @contextmanager
        def on_session() -> Iterator[tuple[Any, Callable[..., Any]]]:
            with Session(sa) as s, s.begin():
                yield s, s.connection().exec_driver_sql

        def plain(key: str) -> None:
            with on_psycopg() as (_, execute):
                insert(execute, key)
            committed[key] = time.time()
            ns.stamped_plain.delay(key)

        def after(key: str) -> None:
            with on_psycopg() as (_, execute):
                insert(execute, key)
            committed[key] = time.time()
            ns.stamped.start(key, workflow_id=key)

        def inside(opener: Callable[[], Any]) -> Callable[[str], None]:
            def go(key: str) -> None:
                with opener() as (conn, execute):
                    insert(execute, key)
                    ns.stamped.start(key, workflow_id=key, connection=conn)
                committed[key] = time.time()

            return go

        ways = [
            ("plain Celery: commit, then delay()", plain),
            ("start() after the commit", after),
            ("start(connection=) psycopg", inside(on_psycopg)),
            ("start(connection=) SQLAlchemy Connection", inside(on_connection)),
            ("start(connection=) SQLAlchemy Session", inside(on_session)),
        ]
        rows = []
        for w, (title, way) in enumerate(ways):
            committed: dict[str, float] = {}
            keys = [f"k{w}-{i}" for i in range(N + 5)]
            for key in keys:  # the first 5 warm up
                way(key)
                time.sleep(SPACING)
            lat = []
            for key in keys[5:]:
                began = None
                deadline = time.monotonic() + 30
                while began is None and time.monotonic() < deadline:
                    began = ns.redis.get(f"{ns.counter}:began:{key}")
                    if began is None:
                        time.sleep(0.01)
                if began is None:
                    raise RuntimeError(f"{title}: {key} never ran")
                lat.append(float(began) - committed[key])
            p50, p99, mean = summary(lat)
            rows.append((title, ms(p50), ms(p99), ms(mean)))
            print(f"  {title}: p50 {ms(p50)}, p99 {ms(p99)}", flush=True)
        table("commit -> workflow body start", [("way", "p50", "p99", "mean"), *rows])
        table("machine", machine())
    finally:
        pg.close()
        sa.dispose()
        clean_up(worker, [ns], schema)


if __name__ == "__main__":
    main()
