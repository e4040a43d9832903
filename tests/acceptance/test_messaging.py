"""Workflow messaging: send / recv with topics, exactly once, Redis wakeups,
durable timeouts, events, and bad input.

Real Postgres, real Redis, real `celery worker` subprocesses (SIGKILLed
where a test says kill). Tests that stop Redis use a private redis-server
on a free port for wakeups; the Celery broker stays on the shared Redis.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import redis

from dbos_celery import (
    InvalidArgumentError,
    MessageTooLargeError,
    NonExistentWorkflowError,
    NotInWorkflowError,
    SendFromStepError,
    SerializationError,
)
from dbos_celery.runner import execute
from dbos_celery.store import messages, workflows
from tests.apps.messaging import build
from tests.pgcluster import PrivateRedis
from tests.support import BACKENDS, REDIS_URL, Env, WorkerProcess, start_worker, wait_for

pytestmark = BACKENDS

APP = "tests.apps.messaging"


# --- helpers ----------------------------------------------------------------


@pytest.fixture
def make_app(env: Env) -> Iterator[Callable[..., SimpleNamespace]]:
    """Build the test-process side of tests.apps.messaging; closed at teardown."""
    built: list[SimpleNamespace] = []

    def make(**options: Any) -> SimpleNamespace:
        ns = build(env.vars(), **options)
        built.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in built:
            ns.durable.close()


def _start_worker(env: Env, workers: list[WorkerProcess], **kw: Any) -> WorkerProcess:
    return start_worker(env, workers, APP, **kw)


def _decode(payload: bytes) -> Any:
    return json.loads(bytes(payload))


def stored_messages(env: Env, destination_id: str) -> list[tuple[str, Any]]:
    """(topic, message) still unconsumed for a destination, oldest first."""
    rows = env.sql(
        "SELECT topic, payload FROM {schema}.messages WHERE destination_id = %s ORDER BY id",
        destination_id,
    )
    return [(t, _decode(p)) for t, p in rows]


def step_names(env: Env, workflow_id: str) -> list[str]:
    rows = env.sql(
        "SELECT name FROM {schema}.steps WHERE workflow_id = %s ORDER BY seq", workflow_id
    )
    return [r[0] for r in rows]


def count(env: Env, table: str) -> int:
    return int(env.sql(f"SELECT count(*) FROM {{schema}}.{table}")[0][0])


def recv_count(env: Env, workflow_id: str) -> int:
    return step_names(env, workflow_id).count("durable.recv")


def waiting_in_recv(env: Env, workflow_id: str) -> bool:
    """A recv has checkpointed its deadline (it is waiting) but not its outcome."""
    rows = env.sql(
        "SELECT count(*) FROM {schema}.steps d WHERE d.workflow_id = %s "
        "AND d.name = 'durable.deadline' AND NOT EXISTS (SELECT 1 FROM {schema}.steps r "
        "WHERE r.workflow_id = d.workflow_id AND r.seq = d.seq - 1)",
        workflow_id,
    )
    return bool(rows[0][0])


def ledger_at(env: Env, workflow_id: str, what: str) -> list[float]:
    rows = env.sql(
        "SELECT at FROM {schema}.ledger WHERE workflow_id = %s AND what = %s ORDER BY id",
        workflow_id,
        what,
    )
    return [float(r[0]) for r in rows]


def workflow_id_of(ns: SimpleNamespace, name: str) -> str:
    (status,) = ns.durable.list_workflows(name=name)
    return str(status.workflow_id)


def finished_workflow(ns: SimpleNamespace) -> str:
    """The id of a workflow that ran to completion (in this process)."""
    assert ns.echo("done") == "done"
    return workflow_id_of(ns, "msg.echo")


@pytest.fixture
def private_redis(services: None) -> Iterator[PrivateRedis]:
    r = PrivateRedis()
    r.start()
    try:
        yield r
    finally:
        r.stop()


# --- 1. the checkout example, on a real worker --------------------------------


@pytest.fixture
def checkout(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """examples/checkout/app.py imported afresh against this test's env."""
    example_env = {
        "DATABASE_URL": env.database_url,
        "REDIS_URL": env.redis_url or "",
        "BROKER_URL": env.broker_url,
        "SCHEMA": env.schema,
        "QUEUE": env.queue,
    }
    for k, v in example_env.items():
        monkeypatch.setenv(k, v)
    env.extra.update(example_env)  # and for the worker subprocess
    sys.modules.pop("examples.checkout.app", None)
    module = importlib.import_module("examples.checkout.app")
    try:
        yield module
    finally:
        module.durable.close()
        sys.modules.pop("examples.checkout.app", None)


def test_checkout_fulfils_once_when_paid_and_cancels_after_timeout(
    env: Env, workers: list[WorkerProcess], checkout: ModuleType
) -> None:
    worker = WorkerProcess(env, "examples.checkout.app")
    workers.append(worker)
    worker.wait_ready()
    paid = checkout.checkout.start("o-paid", 30, workflow_id="o-paid")
    unpaid = checkout.checkout.start("o-unpaid", 1.5, workflow_id="o-unpaid")
    wait_for(lambda: waiting_in_recv(env, "o-paid"), 20, worker.describe)
    for _ in range(3):  # the provider retries its webhook
        checkout.payment_webhook("o-paid", "evt-1", "paid")

    assert paid.result(timeout=20) == "fulfilled"
    assert unpaid.result(timeout=20) == "cancelled"
    assert step_names(env, "o-paid").count("checkout.charge") == 1
    assert "checkout.charge" not in step_names(env, "o-unpaid")
    log = worker.log_path.read_text()
    assert log.count("charging order o-paid") == 1  # the step body ran once
    assert "charging order o-unpaid" not in log
    st = unpaid.status()
    assert (st.updated_at - st.created_at).total_seconds() >= 1.5
    assert stored_messages(env, "o-paid") == []


# --- 2. FIFO and topics -------------------------------------------------------


def test_messages_fifo_per_topic_and_topics_isolated(
    env: Env, workers: list[WorkerProcess], make_app: Callable[..., SimpleNamespace]
) -> None:
    ns = make_app()
    _start_worker(env, workers)
    # the workflow drains "b" first, then the default topic, then "a", while
    # all three are being sent interleaved: a recv must skip other topics
    h = ns.collect_plan.start([["b", 10], [None, 10], ["a", 100]], workflow_id="fifo")
    for i in range(100):
        ns.durable.send("fifo", f"a{i}", "a")
        if i % 10 == 0:
            ns.durable.send("fifo", f"b{i}", "b")
            ns.durable.send("fifo", f"d{i}")  # default topic
    ns.durable.send("fifo", "named None", "None")  # a topic named "None" is not the default

    out = h.result(timeout=30)
    assert out[0] == [f"b{i}" for i in range(0, 100, 10)]
    assert out[1] == [f"d{i}" for i in range(0, 100, 10)]
    assert out[2] == [f"a{i}" for i in range(100)]
    assert out[3:] == [[None], [None], [None]]  # nothing left on any of them
    assert stored_messages(env, "fifo") == [("None", "named None")]


# --- 3. a recv that committed before a kill is replayed, never redone ----------


def test_message_consumed_once_across_kill(
    env: Env, workers: list[WorkerProcess], make_app: Callable[..., SimpleNamespace]
) -> None:
    ns = make_app()
    first = _start_worker(env, workers, name="first")
    h = ns.recv_hold_recv.start("t", 60.0, workflow_id="rr")
    for m in ("m1", "m2", "m3"):
        ns.durable.send("rr", m, "t")
    # recv 1 committed, its ledger step too; the worker now holds in a step
    wait_for(lambda: "hold" in env.ledger("rr"), 20, first.describe)
    assert stored_messages(env, "rr") == [("t", "m2"), ("t", "m3")]
    first.kill()

    second = _start_worker(env, workers, name="second")
    assert h.result(timeout=30) == ["m1", "m2"]
    assert stored_messages(env, "rr") == [("t", "m3")]  # none skipped
    counts = Counter(env.ledger("rr"))
    assert counts["got:m1"] == 1 and counts["got:m2"] == 1, second.describe()
    assert counts["hold"] == 2  # the interrupted step ran again; the recv did not
    assert h.status().recovery_attempts == 1


# --- 4. sends of a killed workflow are replayed, never repeated -----------------


def test_messages_sent_by_killed_workflow_arrive_exactly_once(
    env: Env, workers: list[WorkerProcess], make_app: Callable[..., SimpleNamespace]
) -> None:
    ns = make_app()
    first = _start_worker(env, workers, name="first")
    dest = ns.collect.start(50, "n", 30, workflow_id="dest")
    sender = ns.send_many.start("dest", 50, "n", 0.04, workflow_id="sender")
    wait_for(lambda: step_names(env, "sender").count("durable.send") >= 15, 20, first.describe)
    first.kill()
    sent_before_kill = step_names(env, "sender").count("durable.send")
    assert sent_before_kill < 50, "the sender finished before the kill"

    _start_worker(env, workers, name="second")
    assert sender.result(timeout=30) == 50
    assert dest.result(timeout=30) == list(range(50))  # each once, in order
    assert step_names(env, "sender").count("durable.send") == 50
    assert sender.status().recovery_attempts == 1
    assert stored_messages(env, "dest") == []  # no duplicate left over either


# --- 5. idempotency keys -------------------------------------------------------


def test_outside_send_with_idempotency_key_is_stored_once(
    env: Env, workers: list[WorkerProcess], make_app: Callable[..., SimpleNamespace]
) -> None:
    ns = make_app()
    h = ns.collect.start(3, "pay", 2.0, workflow_id="pay")  # no worker yet
    for _ in range(5):
        ns.durable.send("pay", "paid", "pay", idempotency_key="evt-1")
    assert stored_messages(env, "pay") == [("pay", "paid")]
    # five concurrent retries of another event
    barrier = threading.Barrier(5)

    def retry() -> None:
        barrier.wait()
        ns.durable.send("pay", "refunded", "pay", idempotency_key="evt-2")

    threads = [threading.Thread(target=retry) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stored_messages(env, "pay") == [("pay", "paid"), ("pay", "refunded")]
    assert count(env, "send_keys") == 2

    worker = _start_worker(env, workers)
    wait_for(lambda: recv_count(env, "pay") == 2, 20, worker.describe)
    # retries after consumption store nothing, even with another payload
    for _ in range(5):
        ns.durable.send("pay", "paid (retry)", "pay", idempotency_key="evt-1")
    assert stored_messages(env, "pay") == []
    assert h.result(timeout=20) == ["paid", "refunded", None]
    assert count(env, "messages") == 0


# --- 6. Redis is only a hint ------------------------------------------------------


def test_messages_arrive_while_redis_is_down_and_wakeups_resume(
    env: Env,
    workers: list[WorkerProcess],
    make_app: Callable[..., SimpleNamespace],
    private_redis: PrivateRedis,
) -> None:
    poll = 2.0
    env.redis_url = private_redis.url  # wakeups only; the broker stays shared
    env.extra["DBOS_TEST_POLL_INTERVAL"] = str(poll)
    ns = make_app()
    channel = f"dbos_celery:{env.schema}:"  # every subscriber joins this one
    worker = _start_worker(env, workers, pool="threads", concurrency=2)
    h = ns.collect.start(7, "r", 60, workflow_id="r")
    wait_for(lambda: private_redis.subscribers(channel) >= 1, 10, worker.describe)
    subscribers = private_redis.subscribers(channel)
    latencies: dict[str, float] = {}

    def deliver(message: str) -> float:
        k = recv_count(env, "r")
        wait_for(lambda: waiting_in_recv(env, "r"), 10, worker.describe)
        time.sleep(0.2)  # well inside one poll wait: only a wakeup is faster
        t0 = time.monotonic()
        ns.durable.send("r", message, "r")
        wait_for(lambda: recv_count(env, "r") >= k + 1, 3 * poll + 5, worker.describe)
        latencies[message] = time.monotonic() - t0
        return latencies[message]

    woken = 0.8  # a poll would take at least poll - 0.2 s
    assert deliver("up") < woken, latencies
    private_redis.stop()
    assert deliver("down") < poll + 1.5, latencies  # by polling
    # stored messages are taken at once: a recv does not wait on dead Redis
    k = recv_count(env, "r")
    wait_for(lambda: waiting_in_recv(env, "r"), 10, worker.describe)
    for m in ("burst 1", "burst 2", "burst 3"):
        ns.durable.send("r", m, "r")
    wait_for(lambda: recv_count(env, "r") >= k + 1, 3 * poll + 5, worker.describe)
    t0 = time.monotonic()
    wait_for(lambda: recv_count(env, "r") == k + 3, 10, worker.describe)
    latencies["burst 2 and 3"] = time.monotonic() - t0
    assert latencies["burst 2 and 3"] < 0.5, latencies
    private_redis.start()  # same port, empty
    wait_for(lambda: private_redis.subscribers(channel) >= subscribers, 10, worker.describe)
    assert deliver("back") < woken, latencies  # the subscriber reconnected
    killed = private_redis.client.client_kill_filter(_type="pubsub")
    assert killed >= 1
    wait_for(lambda: private_redis.subscribers(channel) >= subscribers, 10, worker.describe)
    assert deliver("after kill") < woken, latencies
    assert h.result(timeout=10) == [
        "up", "down", "burst 1", "burst 2", "burst 3", "back", "after kill"
    ]  # fmt: skip
    print("delivery latencies (s):", {k: round(v, 3) for k, v in latencies.items()})


# --- 7. the recv timeout is durable ---------------------------------------------


def test_recv_timeout_resumes_with_time_left_after_kill(
    env: Env, workers: list[WorkerProcess], make_app: Callable[..., SimpleNamespace]
) -> None:
    ns = make_app()
    timeout = 7.0
    first = _start_worker(env, workers, name="first")
    h = ns.timed_recv.start(timeout, workflow_id="timed")
    wait_for(lambda: waiting_in_recv(env, "timed"), 20, first.describe)
    (started,) = ledger_at(env, "timed", "run")
    (deadline_row,) = env.sql(
        "SELECT output FROM {schema}.steps WHERE workflow_id = 'timed' "
        "AND name = 'durable.deadline'"
    )
    deadline = float(_decode(deadline_row[0]))
    assert abs(deadline - (started + timeout)) < 0.5
    # ready before the kill: a worker that only starts after it may, on a
    # loaded machine, come up too late to tell the deadline apart
    second = _start_worker(env, workers, name="second")
    time.sleep(max(0.0, started + 2.0 - time.time()))
    first.kill()

    assert h.result(timeout=30) is None
    runs = ledger_at(env, "timed", "run")
    (returned,) = ledger_at(env, "timed", "returned")
    assert len(runs) == 2, second.describe()
    assert runs[1] < deadline - 0.3, "recovered too late to tell a durable deadline apart"
    # resumed with the time that was left: it ends at the recorded deadline,
    # where a fresh timeout would end at runs[1] + timeout (> deadline + 2 s)
    assert deadline - 0.05 <= returned <= deadline + 1.0, (started, deadline, runs, returned)
    assert step_names(env, "timed").count("durable.deadline") == 1
    print(
        f"recv timeout {timeout} s: resumed at +{runs[1] - started:.2f} s, returned at "
        f"+{returned - started:.2f} s (deadline +{deadline - started:.2f} s)"
    )


# --- 8. racing consumers ---------------------------------------------------------


def _consume(
    ns: SimpleNamespace, wid: str, barrier: threading.Barrier, got: list[Any], i: int, seq: int
) -> None:
    barrier.wait()
    with ns.durable.services.store.begin() as conn:  # one connection per thread
        got[i] = messages.consume_message(conn, wid, "race", seq, "durable.recv")
        time.sleep(0.05)  # hold the transaction open while the others try


@pytest.mark.parametrize("messages", [1, 3])
def test_concurrent_consumers_take_each_message_once(
    env: Env, make_app: Callable[..., SimpleNamespace], messages: int
) -> None:
    ns = make_app()
    wid = finished_workflow(ns)
    racers = 8
    for rnd in range(10):
        for i in range(messages):
            ns.durable.send(wid, f"r{rnd}m{i}", "race")
        barrier = threading.Barrier(racers)
        got: list[Any] = [None] * racers
        threads = [
            threading.Thread(target=_consume, args=(ns, wid, barrier, got, i, 1000 * rnd + i))
            for i in range(racers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        taken = sorted(_decode(g[0]) for g in got if g is not None)
        # each thread takes at most one; each message goes to at most one
        # thread; and with SKIP LOCKED a thread may come away empty-handed
        assert len(taken) == len(set(taken)), taken
        leftover = [m for _, m in stored_messages(env, wid)]
        assert sorted(taken + leftover) == [f"r{rnd}m{i}" for i in range(messages)]
        if messages == 1:
            assert taken == [f"r{rnd}m0"]  # exactly one of the racers got it
        recorded = env.sql(
            "SELECT count(*) FROM {schema}.steps WHERE workflow_id = %s AND seq BETWEEN %s AND %s",
            wid,
            1000 * rnd,
            1000 * rnd + racers,
        )[0][0]
        assert recorded == len(taken)  # a checkpoint for each consume, no more
        env.sql("DELETE FROM {schema}.messages")


def test_duplicate_deliveries_consume_message_once(
    env: Env, workers: list[WorkerProcess], make_app: Callable[..., SimpleNamespace]
) -> None:
    ns = make_app()
    worker = _start_worker(env, workers, concurrency=3)
    h = ns.collect.start(2, "dup", 20, workflow_id="dup")
    wait_for(lambda: waiting_in_recv(env, "dup"), 20, worker.describe)
    for _ in range(3):  # the broker delivers the workflow again, in parallel
        ns.durable.services.publish("dup", "msg.collect")
    wait_for(lambda: worker.log_path.read_text().count("msg.collect[dup] succeeded") >= 3, 20)
    ns.durable.send("dup", "x", "dup")
    ns.durable.send("dup", "y", "dup")
    assert h.result(timeout=20) == ["x", "y"]
    ns.durable.services.publish("dup", "msg.collect")  # and once more after it finished
    wait_for(lambda: worker.log_path.read_text().count("msg.collect[dup] succeeded") >= 5, 20)
    assert env.ledger("dup") == ["run"]  # only one execution ever ran the body
    assert recv_count(env, "dup") == 2
    assert h.result(timeout=1) == ["x", "y"]
    assert stored_messages(env, "dup") == []


def test_recv_losing_to_another_runner_consumes_nothing(
    env: Env, make_app: Callable[..., SimpleNamespace]
) -> None:
    """A runner whose recv checkpoint was already written by another runner
    (it lost its lease while waiting) must stop without consuming the message
    and without failing the workflow."""
    ns = make_app()
    d = ns.durable
    inputs = d.services.codec.dumps({"args": [1, "z", 10], "kwargs": {}})
    assert d.services.store.run(workflows.insert_workflow, "contested", "msg.collect", inputs, None)
    runner = threading.Thread(target=execute, args=(d.services, "contested", d.workflows))
    runner.start()
    wait_for(lambda: waiting_in_recv(env, "contested"), 10)
    # the other runner's recv, checkpointed at the same sequence number
    env.sql(
        "INSERT INTO {schema}.steps (workflow_id, seq, name, output) "
        "VALUES ('contested', 0, 'durable.recv', %s)",
        d.services.codec.dumps("theirs"),
    )
    d.send("contested", "mine", "z")
    runner.join(15)
    assert not runner.is_alive()
    assert stored_messages(env, "contested") == [("z", "mine")]  # not consumed
    status = d.retrieve("contested").status()
    assert status.status != "ERROR", status.error
    # whoever runs it next replays the other runner's recv
    if status.status == "ENQUEUED":
        execute(d.services, "contested", d.workflows)
    assert d.retrieve("contested").result(timeout=10) == ["theirs"]
    assert stored_messages(env, "contested") == [("z", "mine")]


# --- 9. bad input -------------------------------------------------------------------


INSIDE_CASES = [
    ("send_unknown_destination", NonExistentWorkflowError),
    ("send_unserializable", SerializationError),
    ("send_oversize", MessageTooLargeError),
    ("send_int_topic", InvalidArgumentError),
    ("send_empty_topic", InvalidArgumentError),
    ("recv_int_topic", InvalidArgumentError),
    ("recv_empty_topic", InvalidArgumentError),
    ("recv_negative_timeout", InvalidArgumentError),
    ("recv_nan_timeout", InvalidArgumentError),
    ("set_event_unserializable", SerializationError),
    ("set_event_oversize", MessageTooLargeError),
    ("get_event_negative_timeout", InvalidArgumentError),
    ("recv_in_step", NotInWorkflowError),
]


def _nothing_written(env: Env) -> None:
    assert count(env, "messages") == 0
    assert count(env, "send_keys") == 0
    assert count(env, "events") == 0


@pytest.mark.parametrize(("case", "error"), INSIDE_CASES, ids=[c for c, _ in INSIDE_CASES])
def test_bad_input_in_workflow_raises_and_writes_nothing(
    env: Env, make_app: Callable[..., SimpleNamespace], case: str, error: type[Exception]
) -> None:
    ns = make_app(max_message_bytes=1024)
    dest = finished_workflow(ns)
    with pytest.raises(error):
        ns.attempt(case, dest)
    wid = workflow_id_of(ns, "msg.attempt")
    assert ns.durable.retrieve(wid).status().status == "ERROR"
    _nothing_written(env)
    if case == "recv_in_step":  # the step's own failure is its checkpoint
        assert step_names(env, wid) == ["msg.recv_in_step"]
    elif case == "send_unknown_destination":
        # the failed send is checkpointed (no message stored), so a replay
        # fails the same way even if the destination exists by then
        assert step_names(env, wid) == ["durable.send"]
    else:
        assert step_names(env, wid) == []


def test_bad_input_outside_workflow_raises_and_writes_nothing(
    env: Env, make_app: Callable[..., SimpleNamespace]
) -> None:
    ns = make_app(max_message_bytes=1024)
    d = ns.durable
    dest = finished_workflow(ns)
    with pytest.raises(NonExistentWorkflowError):
        d.send("no-such-workflow", "x")
    with pytest.raises(NonExistentWorkflowError):
        d.send("no-such-workflow", "x", "t", idempotency_key="k")
    with pytest.raises(SerializationError):
        d.send(dest, object())
    with pytest.raises(SerializationError):
        d.send(dest, {"ids": {1, 2}}, idempotency_key="k")  # a set is not JSON
    with pytest.raises(MessageTooLargeError):
        d.send(dest, "x" * 1025)
    with pytest.raises(MessageTooLargeError):
        d.send(dest, "x" * 2000, idempotency_key="k")
    for topic in (5, b"t", ""):
        with pytest.raises(InvalidArgumentError):
            d.send(dest, "x", topic)
    for key in ("", 5):
        with pytest.raises(InvalidArgumentError):
            d.send(dest, "x", "t", idempotency_key=key)
    with pytest.raises(InvalidArgumentError):
        d.get_event(dest, "k", timeout=-1)
    with pytest.raises(NotInWorkflowError):
        d.recv("t", timeout=0)
    with pytest.raises(NotInWorkflowError):
        d.recv()
    with pytest.raises(NotInWorkflowError):
        d.set_event("k", "v")
    _nothing_written(env)
    assert step_names(env, dest) == []
    # the same calls with good input do write
    d.send(dest, "x" * 900, "t", idempotency_key="k")
    assert stored_messages(env, dest) == [("t", "x" * 900)]


def test_send_in_step_needs_an_idempotency_key(
    env: Env, make_app: Callable[..., SimpleNamespace]
) -> None:
    ns = make_app()
    dest = finished_workflow(ns)
    with pytest.raises(SendFromStepError):
        ns.send_from_step(dest, None)
    assert count(env, "messages") == 0
    # with a key it works, and a retried step (which sent, then failed) sends once
    assert ns.send_from_step(dest, "step-key", True) == 2
    assert stored_messages(env, dest) == [("", "from step, attempt 1")]
    assert count(env, "send_keys") == 1


# --- 10. events -----------------------------------------------------------------------


@pytest.mark.parametrize("wakeups", ["redis", "polling"])
def test_event_set_in_worker_is_seen_by_another_process(
    env: Env,
    workers: list[WorkerProcess],
    make_app: Callable[..., SimpleNamespace],
    wakeups: str,
) -> None:
    if wakeups == "polling":
        env.redis_url = None
    ns = make_app()
    assert ns.durable.services.notifier.__class__.__name__ == (
        "RedisNotifier" if wakeups == "redis" else "LocalNotifier"
    )
    worker = _start_worker(env, workers)
    h = ns.events.start(workflow_id="ev")
    # waits across processes for a value the worker sets later
    assert ns.durable.get_event("ev", "stage", timeout=20) == "started", worker.describe()
    done: list[Any] = []
    waiter = threading.Thread(target=lambda: done.append(ns.durable.get_event("ev", "done", 20)))
    waiter.start()
    time.sleep(0.3)
    assert not done  # still waiting: the event does not exist yet
    t0 = time.monotonic()
    ns.durable.send("ev", "go!", "go")
    waiter.join(25)
    latency = time.monotonic() - t0
    assert done == [{"value": "go!"}]
    assert h.result(timeout=10) == "go!"
    assert ns.durable.get_event("ev", "stage", timeout=0) == "got go!"  # last write wins
    t0 = time.monotonic()
    assert ns.durable.get_event("ev", "never-set", timeout=0.5) is None
    assert time.monotonic() - t0 >= 0.5
    print(f"{wakeups}: send -> recv -> set_event -> get_event took {latency:.3f} s")


# --- 11. sending to a finished workflow ---------------------------------------------


def test_send_from_workflow_to_finished_workflow_stores_message(
    env: Env, make_app: Callable[..., SimpleNamespace]
) -> None:
    ns = make_app()
    dest = finished_workflow(ns)
    assert ns.send_to(dest, "late", "t") == "sent"
    assert stored_messages(env, dest) == [("t", "late")]
    sender = workflow_id_of(ns, "msg.send_to")
    assert step_names(env, sender) == ["durable.send"]
    assert ns.durable.retrieve(dest).status().status == "SUCCESS"
    # and from outside, the same
    ns.durable.send(dest, "later", "t")
    assert stored_messages(env, dest) == [("t", "late"), ("t", "later")]


def test_send_succeeds_with_redis_down_and_logs_the_failure_once(
    env: Env,
    make_app: Callable[..., SimpleNamespace],
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env.redis_url = private_redis.url
    ns = make_app()
    dest = finished_workflow(ns)
    private_redis.stop()
    with caplog.at_level(logging.WARNING, logger="dbos_celery"):
        for i in range(5):
            ns.durable.send(dest, f"m{i}", "t")  # the commit is what counts
    assert [m for _, m in stored_messages(env, dest)] == [f"m{i}" for i in range(5)]
    failures = [r for r in caplog.records if "publish failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]


def test_subscriptions_follow_waiters_and_linger_briefly(services: None) -> None:
    """A process subscribes to a key's channel only while (or just after)
    one of its waiters waits for it, and never misses the hint meanwhile."""
    from dbos_celery.keys import key
    from dbos_celery.wakeup import RedisNotifier

    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"dbos_celery:linger-{uuid.uuid4().hex[:8]}:"
    notifier = RedisNotifier(REDIS_URL, prefix)
    k = key("m", "wf-1", "t")

    def subscribers() -> int:
        return int(client.pubsub_numsub(prefix + k)[0][1])

    try:
        notifier.start()
        assert subscribers() == 0
        with notifier.waiters.register(k) as waiter:
            wait_for(lambda: subscribers() == 1, 5)
            client.publish(prefix + k, k)  # another process's hint
            assert waiter.wait(5)
        # lingers, so that the next recv of a loop needs no new SUBSCRIBE ...
        assert subscribers() == 1
        with notifier.waiters.register(k) as waiter:
            client.publish(prefix + k, k)
            assert waiter.wait(5)
        # ... and is dropped once nobody has waited for a while
        wait_for(lambda: subscribers() == 0, 5)
    finally:
        notifier.stop()
        client.close()
