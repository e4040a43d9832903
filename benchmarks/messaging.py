"""send -> recv wakeup latency, and sends per second.

    python benchmarks/messaging.py      # BENCH_POOLS=prefork,threads,gevent

A workflow on a `celery worker` subprocess (-c 2, each pool in turn) loops
``durable.recv()``; this process sends it messages carrying their send time
(``time.time()`` taken before ``send``), 5, 50 and 500 ms apart, and the
workflow returns, per message, when its ``recv`` returned. Printed: stamp ->
recv returned, and its parts, from wall-clock stamps that every process
shares (``_stamps.py``): the sender's commit, then PUBLISH to the worker's
subscriber thread fanning the hint out, the waiting thread waking, the
consume statement, and recv returning.
Then once with polling only (``redis_url=None``). Next to them, the floor
measured in the same run: one bare INSERT + COMMIT (psycopg) and one Redis
PUBLISH -> subscriber thread hop. Target: p50 <= 1.3 ms, p99 <= 3 ms at 50
and 500 ms apart, on every pool.
"""

from __future__ import annotations

import importlib.util
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._app import build  # noqa: E402
from benchmarks._common import (  # noqa: E402
    Worker,
    app_env,
    bare_commits,
    bare_pubsub_hops,
    clean_up,
    machine,
    ms,
    new_schema,
    pct,
    round_trips,
    sql,
    summary,
    table,
)
from benchmarks._stamps import LAST  # noqa: E402

# (seconds between messages, how many): as users see it, spaced apart, and
# back to back
SPACINGS = [(0.005, int(os.environ.get("BENCH_MESSAGES", 300))), (0.05, 200), (0.5, 30)]
POLL_MESSAGES = int(os.environ.get("BENCH_POLL_MESSAGES", 50))
SENDS = int(os.environ.get("BENCH_SENDS", 2000))


HOPS = ("commit", "PUBLISH -> subscriber", "-> waiter", "consume", "-> return")


def wakeup_timeline(
    ns: SimpleNamespace, schema: str, wid: str, n: int, spacing: Callable[[], float]
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """Start a receiver of n messages on the worker, wait until it is blocked
    in recv, send n stamped messages ``spacing()`` seconds apart. Per
    message, seconds: stamp -> recv returned, the send call, and the HOPS
    (of the messages whose recv was waiting when they came, with stamps)."""
    handle = ns.receiver.start(n, workflow_id=wid)
    deadline = time.monotonic() + 30
    # waiting = its recv has checkpointed the deadline (seq 1)
    while not sql(f'SELECT 1 FROM "{schema}".steps WHERE workflow_id = %s', wid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"receiver {wid} did not start")
        time.sleep(0.01)
    time.sleep(0.2)
    send = ns.durable.send
    returned: dict[float, float] = {}
    committed: dict[float, float] = {}
    due = time.perf_counter()
    for _ in range(n):
        due += spacing()
        while (left := due - time.perf_counter()) > 0:
            time.sleep(left if left > 0.002 else 0)  # spin for the last 2 ms
        t = time.time()
        send(wid, {"t": t})
        returned[t] = time.time()
        committed[t] = LAST.get("committed", 0.0)  # the notify after the commit
    got = handle.result(timeout=60 + n * 0.6)
    total = [g[1] - g[0] for g in got]
    call = [returned[g[0]] - g[0] for g in got]
    hops: dict[str, list[float]] = {h: [] for h in HOPS}
    for t, back, fanned, woke, consume, consumed in got:
        points = [t, committed[t], fanned, woke, consumed, back]
        if consume >= woke and all(a <= b for a, b in zip(points, points[1:], strict=False)):
            for hop, a, b in zip(HOPS, points[:-1], points[1:], strict=True):
                hops[hop].append(b - a)
    return total, call, hops


def wakeup_latencies(
    ns: SimpleNamespace, schema: str, wid: str, n: int, spacing: Callable[[], float]
) -> list[float]:
    """Seconds from each stamped send to its recv returning (wakeup_timeline)."""
    return wakeup_timeline(ns, schema, wid, n, spacing)[0]


def sends_per_second(ns: SimpleNamespace, destination: str) -> tuple[float, list[float]]:
    send = ns.durable.send
    times = []
    t_all = time.perf_counter()
    for i in range(SENDS):
        t0 = time.perf_counter()
        send(destination, {"i": i, "t": time.time()})
        times.append(time.perf_counter() - t0)
    return SENDS / (time.perf_counter() - t_all), times


def row(name: str, values: list[float]) -> tuple[str, ...]:
    p50, p99, mean = summary(values)
    return (name, ms(p50), ms(p99), ms(mean), str(len(values)))


def pools() -> list[str]:
    """The worker pools to measure (BENCH_POOLS); gevent only if installed
    (the bench extra)."""
    wanted = os.environ.get("BENCH_POOLS", "prefork,threads,gevent").split(",")
    have = []
    for pool in wanted:
        if pool == "gevent" and importlib.util.find_spec("gevent") is None:
            print("  (gevent is not installed: pip install -e '.[bench]')", flush=True)
            continue
        have.append(pool)
    return have


def main() -> None:
    schema = new_schema()
    env = {**app_env(schema, f"{schema}_q"), "BENCH_STAMPS": "1"}
    poll_env = app_env(schema, f"{schema}_pq", wakeups=False)
    ns, ns_poll = build(env), build(poll_env)
    worker = None
    try:
        ns.durable.migrate()
        print(f"dbos_celery messaging benchmark (schema {schema})", flush=True)
        bare = bare_commits(schema, 500)
        bare_spaced = {s: bare_commits(schema, n, s) for s, n in ((0.05, 60), (0.5, 16))}
        hop_spaced = {s: round_trips(n, s) for s, n in ((0.0, 200), (0.05, 60), (0.5, 16))}
        hops = bare_pubsub_hops(1000)

        head = ("", "p50", "p99", "mean", "n")
        wakeups = [head]
        timeline = [("pool, spacing", "send call", *HOPS, "total", "n")]
        rate, send_times = 0.0, []
        for pool in pools():
            worker = Worker(env, ns.queue, pool=pool).wait_ready(ns.app)
            for spacing, n in SPACINGS:
                wid = f"recv-{pool}-{spacing}"
                total, call, by_hop = wakeup_timeline(ns, schema, wid, n, lambda s=spacing: s)
                label = f"{pool} -c 2, {spacing * 1000:g} ms apart"
                wakeups.append(row(label, total))
                parts = [call, *by_hop.values(), total]
                timeline.append((label, *(ms(statistics.median(x)) if x else "-" for x in parts),
                                 str(len(by_hop["commit"]))))  # fmt: skip
                print(f"  {label}: p50 {ms(pct(total, 50))}, p99 {ms(pct(total, 99))}", flush=True)
            if pool == "prefork":
                rate, send_times = sends_per_second(ns, wid)
            worker.stop()
            worker = None
        wakeups.append(("target (50 and 500 ms apart)", "<= 1.3 ms", "<= 3 ms"))

        worker = Worker(poll_env, ns_poll.queue).wait_ready(ns_poll.app)
        poll_lat = wakeup_latencies(
            ns_poll, schema, "recv-poll", POLL_MESSAGES, lambda: random.uniform(0.02, 0.2)
        )
        poll_interval = ns_poll.durable.services.settings.poll_interval
        wakeups.append(row(f"prefork, polling only (poll_interval={poll_interval:g} s)",
                           poll_lat))  # fmt: skip

        table("machine", machine())
        table("send -> recv wakeup, stamp before send() -> recv returned (Redis wakeups)", wakeups)
        table("where the time goes (p50 of each part; n: messages whose recv was waiting)",
              timeline)  # fmt: skip
        table(
            "sends from one producer (outside a workflow, Redis wakeups)",
            [
                head,
                row("durable.send() call", send_times),
                ("sends per second", f"{rate:.0f} /s"),
            ],
        )
        table(
            "floor, same run",
            [
                head,
                row("bare INSERT+COMMIT (psycopg)", bare),
                *(row(f"  the same, {s * 1000:g} ms apart", v) for s, v in bare_spaced.items()),
                *(row(f"SELECT 1 round trip, {s * 1000:g} ms apart", v)
                  for s, v in hop_spaced.items()),
                row("Redis PUBLISH -> subscriber thread", hops),
                ("sum (one commit + one hop)",
                 ms(statistics.median(bare) + statistics.median(hops)), "", "", ""),
            ],
        )  # fmt: skip
    finally:
        clean_up(worker, [ns, ns_poll], schema)


if __name__ == "__main__":
    main()
