"""Helpers shared by the benchmark scripts: services, schemas, a worker
subprocess, the bare floors (one INSERT commit, one Redis pub/sub hop) and
table printing."""

from __future__ import annotations

import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")


def new_schema() -> str:
    return f"bench_{uuid.uuid4().hex[:10]}"


def sql(query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def drop_schema(schema: str) -> None:
    sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --- statistics and printing --------------------------------------------------


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def ms(seconds: float) -> str:
    if abs(seconds) < 1e-5:
        return f"{seconds * 1e6:.2f} us"
    return f"{seconds * 1000:.3f} ms"


def machine() -> list[tuple[str, str]]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    pg = sql("SHOW server_version")[0][0]
    sc = sql("SHOW synchronous_commit")[0][0]
    rv = redis.Redis.from_url(REDIS_URL).info("server")["redis_version"]
    return [
        ("machine", f"{os.cpu_count()} CPUs (nproc), {cpu}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("postgres", f"{pg} (synchronous_commit={sc}), loopback"),
        ("redis", f"{rv}, loopback"),
        ("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"),
    ]


def table(title: str, rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows if len(r) > i) for i in range(max(map(len, rows)))]
    print(f"\n{title}\n" + "-" * len(title))
    for r in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())


# --- floors -------------------------------------------------------------------


class BareInsert:
    """INSERT of a steps-like row into a scratch table on a plain psycopg
    connection, committed (psycopg's default: BEGIN, INSERT, COMMIT) or, with
    ``autocommit``, as one implicitly committed statement."""

    def __init__(self, schema: str, *, autocommit: bool = False) -> None:
        self.conn = psycopg.connect(DATABASE_URL, autocommit=autocommit)
        self.autocommit = autocommit
        table = f'"{schema}".scratch'
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (workflow_id text, seq int, name text, "
            "output bytea, created_at timestamptz not null default now(), "
            "primary key (workflow_id, seq))"
        )
        self.conn.commit()
        self.sql = f"INSERT INTO {table} (workflow_id, seq, name, output) VALUES (%s, %s, %s, %s)"
        self.wid, self.seq = str(uuid.uuid4()), 0

    def __call__(self) -> float:
        """One INSERT + COMMIT; returns the seconds it took."""
        self.seq += 1
        t0 = time.perf_counter()
        self.conn.execute(self.sql, (self.wid, self.seq, "bench.trivial", b"1"))
        if not self.autocommit:
            self.conn.commit()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.conn.close()


def bare_commits(schema: str, n: int, spacing: float = 0.0) -> list[float]:
    """Seconds per bare INSERT + COMMIT, n times (after a warm-up),
    ``spacing`` seconds apart."""
    bare = BareInsert(schema)
    try:
        out = []
        for _ in range(n + 20):
            out.append(bare())
            time.sleep(spacing)
        return out[20:]
    finally:
        bare.close()


def round_trips(n: int, spacing: float) -> list[float]:
    """Seconds per ``SELECT 1`` (one round trip to a Postgres backend, no
    disk), ``spacing`` seconds apart: what one hop between processes costs
    when the machine idles between messages."""
    conn = psycopg.connect(DATABASE_URL, autocommit=True)
    try:
        out = []
        for _ in range(n + 5):
            t0 = time.perf_counter()
            conn.execute("SELECT 1")
            out.append(time.perf_counter() - t0)
            time.sleep(spacing)
        return out[5:]
    finally:
        conn.close()


def bare_pubsub_hops(n: int = 1000, spacing: float = 0.002) -> list[float]:
    """Seconds from PUBLISH to a subscriber thread in this process holding the
    message (the same get_message loop as dbos_celery's subscriber)."""
    channel = f"bench:{uuid.uuid4().hex}"
    hops: list[float] = []
    ready = threading.Event()

    def listen() -> None:
        ps = redis.Redis.from_url(REDIS_URL).pubsub(ignore_subscribe_messages=True)
        ps.subscribe(channel)
        ready.set()
        while len(hops) < n:
            m = ps.get_message(timeout=1.0)
            if m is not None and m["type"] == "message":
                hops.append(time.perf_counter() - float(m["data"]))
        ps.close()

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    ready.wait(5)
    time.sleep(0.1)
    pub = redis.Redis.from_url(REDIS_URL)
    for _ in range(n):
        pub.publish(channel, repr(time.perf_counter()))
        time.sleep(spacing)
    t.join(10)
    return hops


# --- a `celery worker` subprocess ---------------------------------------------


class Worker:
    """``celery -A <app> worker -P <pool>`` for one schema/queue."""

    def __init__(
        self,
        env: dict[str, str],
        queue: str,
        concurrency: int = 2,
        app: str = "benchmarks._app",
        pool: str = "prefork",
    ) -> None:
        self.log = Path(f"/tmp/dbos_celery_bench/{env['BENCH_SCHEMA']}-{time.time_ns()}.log")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.hostname = f"bench-{uuid.uuid4().hex[:8]}@localhost"
        cmd = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "-P", pool, "-c", str(concurrency), "-l", "warning", "-Q", queue,
            "-n", self.hostname, "--without-mingle", "--without-gossip", "--without-heartbeat",
        ]  # fmt: skip
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        full_env = {**os.environ, **env, "PYTHONPATH": path}
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, app: Celery, timeout: float = 30.0) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log.read_text()[-3000:]}")
            if app.control.ping(destination=[self.hostname], timeout=0.5):
                return self
        raise RuntimeError(f"worker not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()


def clean_up(worker: Worker | None, apps: Sequence[Any], schema: str, *queues: str) -> None:
    """After a run: stop the worker, close the apps' Durables, delete their
    queues (and ``queues``) and drop the schema."""
    if worker is not None:
        worker.stop()
    for ns in apps:
        ns.durable.close()
    forget_queues(*(ns.queue for ns in apps), *queues)
    drop_schema(schema)


def forget_queues(*queues: str) -> None:
    """Delete the broker keys of our Celery queues (messages and bindings)."""
    keys = [k for q in queues for k in (q, f"_kombu.binding.{q}", f"_kombu.binding_permanent.{q}")]
    redis.Redis.from_url(REDIS_URL).delete(*keys)


def app_env(schema: str, queue: str, *, wakeups: bool = True) -> dict[str, str]:
    """Environment read by benchmarks/_app.py (in workers and in-process)."""
    return {
        "BENCH_SCHEMA": schema,
        "BENCH_QUEUE": queue,
        "BENCH_DATABASE_URL": DATABASE_URL,
        "BENCH_BROKER_URL": REDIS_URL,
        "BENCH_WAKEUP_URL": REDIS_URL if wakeups else "",
    }


def summary(values: list[float]) -> tuple[float, float, float]:
    """p50, p99, mean."""
    return pct(values, 50), pct(values, 99), statistics.fmean(values)


# --- query plans ---------------------------------------------------------------


def _scans(plan: dict[str, Any]) -> list[str]:
    node = plan["Node Type"]
    here = []
    if "Scan" in node:
        what = plan.get("Index Name") or plan.get("Relation Name") or ""
        here.append(f"{node} {what}".strip())
    for child in plan.get("Plans", []):
        here += _scans(child)
    return here


def explain(
    conn: psycopg.Connection[Any], durable: Any, stmt: Any, params: dict[str, Any] | None = None
) -> tuple[str, float]:
    """The scans of one of the library's statements and its EXPLAIN ANALYZE
    time in seconds, run in a transaction rolled back (the instrumentation
    inflates statements that touch many rows). Compiled for its own values,
    as the store compiles a statement it does not cache."""
    text, defaults = durable.services.store.compiled(stmt, cache=False)
    with conn.transaction(force_rollback=True):
        got = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {text}", {**defaults, **(params or {})})
        plan = got.fetchone()[0][0]  # type: ignore[index]
    return ", ".join(sorted(set(_scans(plan["Plan"])))) or "(none)", plan["Execution Time"] / 1000
