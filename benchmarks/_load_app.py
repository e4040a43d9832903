"""The app of benchmarks/load.py, in-process and in the worker subprocess.

``build(env)`` (the variables of ``benchmarks._common.app_env``): a Celery
app + Durable for one schema and queue, with the mixed workflow
``load.wf`` (3 steps, 2 recvs, 1 send to the next workflow's "peer" topic,
1 recv of that) and the plain baseline task ``load.plain``.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

import redis
from celery import Celery

from dbos_celery import Durable


def wid(i: int, n: int) -> str:
    return f"load-{i % n:06d}"


def build(env: dict[str, str]) -> SimpleNamespace:
    schema, queue = env["BENCH_SCHEMA"], env["BENCH_QUEUE"]
    app = Celery("load", broker=env["BENCH_BROKER_URL"])
    app.conf.task_default_queue = queue
    app.conf.broker_connection_retry_on_startup = True
    app.conf.worker_hijack_root_logger = False
    durable = Durable(
        app, env["BENCH_DATABASE_URL"], redis_url=env["BENCH_WAKEUP_URL"] or None, schema=schema
    )
    counter = f"load:{schema}:done"
    r = redis.Redis.from_url(env["BENCH_BROKER_URL"])  # connects lazily (per process)

    @durable.step(name="load.step")
    def step(i: int, k: int) -> int:
        return i * 10 + k

    @durable.workflow(name="load.wf")
    def wf(i: int, n: int) -> list[Any]:
        out: list[Any] = [step(i, 1)]
        out.append(durable.recv("p", timeout=120))
        out.append(step(i, 2))
        out.append(durable.recv("p", timeout=120))
        durable.send(wid(i + 1, n), i, topic="peer")
        out.append(durable.recv("peer", timeout=120))
        out.append(step(i, 3))
        return out

    @app.task(name="load.plain", ignore_result=True)
    def plain(i: int, n: int) -> int:
        done = r.incr(counter)
        if done in (1, n):
            r.set(f"{counter}:{'first' if done == 1 else 'last'}", repr(time.time()))
        return i + 1

    return SimpleNamespace(
        app=app, durable=durable, schema=schema, queue=queue, counter=counter, redis=r,
        wf=wf, plain=plain,
    )  # fmt: skip


# the worker subprocess: `celery -A benchmarks._load_app worker`
if os.environ.get("BENCH_SCHEMA"):
    _ns = build(dict(os.environ))
    app = _ns.app
    durable = _ns.durable
