"""The dashboard's list page and /metrics on a big table.

    python benchmarks/dashboard.py      # BENCH_ROWS=1000000 (about 1 min to fill)

A fresh schema is filled straight with generate_series: BENCH_ROWS workflow
rows created over the last month (97 % SUCCESS, 1.5 % ERROR, 1 % CANCELLED,
and ENQUEUED, PENDING and WAITING ones), 20 names and a rare one, an md5 id
each, one checkpoint per workflow written over the last hour, an event for
one in ten, 2,000 waiting messages; then ANALYZEd. Printed: the time of
``GET /`` through the dashboard's ASGI app (its queries, the rendering and
the HTTP layer, in process), of each filter and of a deep page, next to a
bare ``SELECT ... LIMIT 50``; every statement with its plan (the scans it
uses) and its time (EXPLAIN ANALYZE); and ``GET /metrics``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
from celery import Celery  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

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
from dbos_celery.dashboard import create_app  # noqa: E402
from dbos_celery.dashboard.pages import COUNT_CAP  # noqa: E402
from dbos_celery.dashboard.paging import encode_cursor, filters  # noqa: E402
from dbos_celery.store import inspect, metrics  # noqa: E402
from dbos_celery.store.inspect import PageQuery  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", 1_000_000))
REPEAT = 20

_STATUS = (
    "CASE WHEN i %% 1000 < 970 THEN 'SUCCESS' WHEN i %% 1000 < 985 THEN 'ERROR' "
    "WHEN i %% 1000 < 995 THEN 'CANCELLED' WHEN i %% 1000 < 997 THEN 'ENQUEUED' "
    "WHEN i %% 1000 < 998 THEN 'PENDING' ELSE 'WAITING' END"
)


def fill(schema: str) -> None:
    s = f'"{schema}"'
    n = ROWS
    # created over the last month, inserted oldest first (as they would be)
    sql(f"INSERT INTO {s}.workflows (id, name, status, inputs, created_at, updated_at, "
        f"recovery_attempts) SELECT md5(i::text), CASE WHEN i %% 10007 = 0 THEN 'app.rare' "
        f"ELSE 'app.wf' || (i %% 20) END, {_STATUS}, '\\x7b7d', "
        f"now() - ({n} - i) * interval '2.6 seconds', "
        f"now() - ({n} - i) * interval '2.6 seconds' + interval '1 second', "
        f"CASE WHEN i %% 500 = 0 THEN 1 ELSE 0 END FROM generate_series(1, {n}) i")  # fmt: skip
    sql(f"INSERT INTO {s}.steps (workflow_id, seq, name, output, created_at) "
        f"SELECT md5(i::text), 0, 'app.step', '\\x31', "
        f"now() - ({n} - i) * (interval '1 hour' / {n}) "
        f"FROM generate_series(1, {n}) i")  # fmt: skip
    sql(f"INSERT INTO {s}.events (workflow_id, key, value) SELECT md5(i::text), 'stage', "
        f"'\\x31' FROM generate_series(1, {n}, 10) i")  # fmt: skip
    sql(f"INSERT INTO {s}.messages (destination_id, topic, payload) SELECT md5(i::text), "
        f"'topic', '\\x31' FROM generate_series(1, {n}, {max(1, n // 2000)}) i")  # fmt: skip
    sql(f"VACUUM ANALYZE {s}.workflows, {s}.steps, {s}.events, {s}.messages")


def timed(fn: Any) -> float:
    """The median of REPEAT runs of ``fn``, after two to warm up."""
    fn()
    fn()
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    schema = new_schema()
    d = Durable(Celery("bench"), DATABASE_URL, schema=schema)
    try:
        d.migrate()
        print(f"dbos_celery dashboard benchmark (schema {schema}): {ROWS:,} workflow rows",
              flush=True)  # fmt: skip
        t = time.perf_counter()
        fill(schema)
        print(f"  filled in {time.perf_counter() - t:.0f} s", flush=True)
        w = f'"{schema}".workflows'
        mid = sql(f"SELECT created_at, id FROM {w} ORDER BY created_at DESC, id DESC "
                  f"OFFSET {ROWS // 2} LIMIT 1")[0]  # fmt: skip
        some = sql(f"SELECT id FROM {w} ORDER BY created_at DESC OFFSET {ROWS // 3} LIMIT 1")[0][0]
        now = sql("SELECT now()")[0][0]
        cases = [
            ("newest 50 (/)", PageQuery()),
            ("status ERROR (1.5 %)", PageQuery(status="ERROR")),
            ("status WAITING (0.2 %)", PageQuery(status="WAITING")),
            ("name app.wf7 (5 %)", PageQuery(name="app.wf7")),
            ("name app.rare (0.01 %)", PageQuery(name="app.rare")),
            ("id prefix, 4 characters", PageQuery(id_prefix=some[:4])),
            ("one day, 10 days ago", PageQuery(created_after=now - timedelta(days=10),
                                               created_before=now - timedelta(days=9))),
            ("page 10,000 (a cursor half-way)", PageQuery(before=(mid[0], mid[1]))),
        ]  # fmt: skip
        app = create_app(d, token=None)
        page_rows = []
        with TestClient(app) as client, psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            for label, q in cases:
                params = filters(q)
                if q.before is not None:
                    params["older"] = encode_cursor(q.before)
                got = client.get("/", params=params)
                assert got.status_code == 200, got.text[:500]
                http = timed(lambda params=params: client.get("/", params=params))
                scans, took = explain(conn, d, inspect.page_statement(q))
                cscans, ctook = explain(conn, d, inspect.counts_statement(q, COUNT_CAP))
                page_rows.append((label, ms(http), ms(took), scans, ms(ctook), cscans))
                print(f"  {label}: {ms(http)}", flush=True)
            bare_limit = timed(lambda: conn.execute(f"SELECT * FROM {w} LIMIT 50").fetchall())
            bare_newest = timed(
                lambda: conn.execute(
                    f"SELECT * FROM {w} ORDER BY created_at DESC, id DESC LIMIT 50"
                ).fetchall()
            )
            failed = sql(f"SELECT id FROM {w} WHERE status = 'ERROR' LIMIT 1")[0][0]
            detail = timed(lambda: client.get(f"/workflows/{failed}"))
            metrics_http = timed(lambda: client.get("/metrics"))
            metric_rows = [
                (name, *explain(conn, d, stmt, params))
                for name, stmt, params in (
                    ("by status and name", metrics._BY_STATUS_NAME, None),
                    ("oldest ENQUEUED / PENDING / WAITING", metrics._OLDEST, None),
                    ("messages waiting", metrics._MESSAGES, None),
                    ("checkpoints in the last 60 s", metrics._RECENT_STEPS, {"window": 60.0}),
                    ("live workers", metrics._LIVE_WORKERS, {"timeout": 2.0}),
                )
            ]  # fmt: skip
        table("machine", machine())
        table(f"GET / on {ROWS:,} workflow rows, 50 a page (median of {REPEAT})", [
            ("page", "GET / (in process)", "page query", "its scans",
             f"counts (capped at {COUNT_CAP:,})", "their scans"),
            *page_rows,
        ])  # fmt: skip
        table("next to a bare query on the same table", [
            ("SELECT * FROM workflows LIMIT 50", ms(bare_limit)),
            ("SELECT * FROM workflows ORDER BY created_at DESC, id DESC LIMIT 50",
             ms(bare_newest)),
            ("GET /workflows/<id> (an ERROR one)", ms(detail)),
            ("GET /metrics", ms(metrics_http)),
        ])  # fmt: skip
        table("the /metrics statements (EXPLAIN ANALYZE)", [
            ("statement", "scans", "time"),
            *((n, s_, ms(t_)) for n, s_, t_ in metric_rows),
        ])  # fmt: skip
    finally:
        d.close()
        drop_schema(schema)


if __name__ == "__main__":
    main()
