"""The app the benchmarks run, in-process and in `celery worker` subprocesses.

``build(env)`` makes a Celery app + Durable for one schema and queue; the
worker subprocess builds it from its environment (module-level ``app``).
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import redis
from celery import Celery

from dbos_celery import Durable


def build(env: dict[str, str]) -> SimpleNamespace:
    schema, queue = env["BENCH_SCHEMA"], env["BENCH_QUEUE"]
    app = Celery("bench", broker=env["BENCH_BROKER_URL"])
    app.conf.task_default_queue = queue
    app.conf.broker_connection_retry_on_startup = True
    app.conf.worker_hijack_root_logger = False
    if env.get("BENCH_RESULT_BACKEND"):  # calls.py: the plain .get() baseline
        app.conf.result_backend = env["BENCH_RESULT_BACKEND"]
        app.conf.result_expires = 600  # the keys' TTL in Redis
    options = {}
    if env.get("BENCH_PARK_AFTER"):  # parking.py
        options["park_after"] = float(env["BENCH_PARK_AFTER"])
    if env.get("BENCH_ENQUEUED_TIMEOUT"):  # backlog.py
        options["enqueued_timeout"] = float(env["BENCH_ENQUEUED_TIMEOUT"])
    durable = Durable(
        app,
        env["BENCH_DATABASE_URL"],
        redis_url=env["BENCH_WAKEUP_URL"] or None,
        schema=schema,
        **options,
    )
    counter = f"bench:{schema}:done"
    r = redis.Redis.from_url(env["BENCH_BROKER_URL"])  # connects lazily (per process)

    def trivial(i: int) -> int:
        return i + 1

    # --- steps.py ---

    step = durable.step(name="bench.trivial")(trivial)

    @durable.workflow(name="bench.one_step")
    def one_step(i: int) -> int:
        return step(i)

    deferred = durable.step(name="bench.trivial_deferred", defer_checkpoint=True)(trivial)

    @durable.workflow(name="bench.one_deferred_step")
    def one_deferred_step(i: int) -> int:
        """Its step's checkpoint commits with the final status."""
        return deferred(i)

    @app.task(name="bench.plain", ignore_result=True)
    def plain(i: int, n: int) -> int:
        out = trivial(i)
        # completion count, and the times of the first and n-th completions
        done = r.incr(counter)
        if done in (1, n):
            r.set(f"{counter}:{'first' if done == 1 else 'last'}", repr(time.time()))
        return out

    # --- messaging.py ---

    if env.get("BENCH_STAMPS"):  # messaging.py's timeline: stamps at each hop
        from benchmarks import _stamps

        _stamps.install()

    @durable.workflow(name="bench.receiver")
    def receiver(n: int) -> list[list[float]]:
        """recv n messages {"t": send time}; per message [its stamp, the
        time its recv returned] and, with BENCH_STAMPS, when the subscriber
        thread fanned the hint out, the waiter woke, the consume statement
        began and ended (epoch seconds)."""
        from benchmarks._stamps import LAST

        got = []
        for _ in range(n):
            m = durable.recv(timeout=60)
            returned = time.time()
            hops = [LAST.get(k, 0.0) for k in ("fanned_out", "waiter_woke", "consume", "consumed")]
            got.append([m["t"], returned, *hops])
        return got

    # --- parking.py ---

    @durable.workflow(name="bench.parked")
    def parked() -> dict[str, float]:
        """recv one message {"t": send time} (10 min timeout, so it parks);
        the send time, when the woken run's body began (a replay, in the
        worker child) and when its recv returned (epoch seconds)."""
        entered = time.time()
        m = durable.recv(timeout=600)
        return {"t": m["t"], "entered": entered, "returned": time.time()}

    # --- intx.py ---

    @durable.workflow(name="bench.stamped")
    def stamped(key: str) -> None:
        """Note when its body started (epoch seconds, in Redis)."""
        r.set(f"{counter}:began:{key}", repr(time.time()))

    @app.task(name="bench.stamped_plain", ignore_result=True)
    def stamped_plain(key: str) -> None:
        """The same for a plain Celery task."""
        r.set(f"{counter}:began:{key}", repr(time.time()))

    # --- calls.py ---

    @app.task(name="bench.add")
    def add(i: int) -> int:
        """The plain baseline: its result goes to the result backend."""
        return trivial(i)

    @app.task(name="bench.add_durable", ignore_result=True)
    def add_durable(i: int) -> int:
        """The same for durable.call, which needs no result backend."""
        return trivial(i)

    @durable.workflow(name="bench.caller")
    def caller(n: int) -> list[float]:
        """n durable.calls one after the other; seconds per call."""
        lat = []
        for i in range(n):
            t0 = time.perf_counter()
            durable.call(add_durable, i)
            lat.append(time.perf_counter() - t0)
        return lat

    return SimpleNamespace(
        app=app, durable=durable, schema=schema, queue=queue, counter=counter, redis=r,
        trivial=trivial, step=step, one_step=one_step, one_deferred_step=one_deferred_step,
        plain=plain,
        receiver=receiver, add=add, add_durable=add_durable, caller=caller, parked=parked,
        stamped=stamped, stamped_plain=stamped_plain,
    )  # fmt: skip


# the worker subprocess: `celery -A benchmarks._app worker`
if os.environ.get("BENCH_SCHEMA"):
    _ns = build(dict(os.environ))
    app = _ns.app
    durable = _ns.durable
