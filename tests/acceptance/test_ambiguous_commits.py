"""One call, one row, whatever the library retries: a TCP proxy loses the
server's answer after a committed INSERT (or COMMIT), the library sees a
lost connection and tries again, and the call still stores exactly once:
send with and without an idempotency key, start without an id, set_event."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from tests.apps.messaging import build
from tests.proxy import DropReplyProxy
from tests.support import Env, WorkerProcess, app_fixture, start_worker

ns_direct = app_fixture(build)  # a producer that connects directly
APP = "tests.apps.messaging"
N = 10


@pytest.fixture
def via_proxy(env: Env, proxy: DropReplyProxy) -> Iterator[SimpleNamespace]:
    """A producer whose database connections go through the proxy."""
    built = build({**env.vars(), "DBOS_TEST_DATABASE_URL": proxy.url(env.database_url)})
    built.durable.migrate()
    try:
        yield built
    finally:
        built.durable.close()


def _messages(env: Env, wid: str) -> list[object]:
    return [r[0] for r in env.sql(
        "SELECT convert_from(payload, 'UTF8') FROM {schema}.messages WHERE destination_id = %s "
        "ORDER BY id", wid)]  # fmt: skip


@pytest.mark.parametrize("keyed", [False, True], ids=["no key", "idempotency key"])
def test_send_stores_once_per_call_when_the_commit_answer_is_lost(
    env: Env, proxy: DropReplyProxy, via_proxy: SimpleNamespace, keyed: bool
) -> None:
    via_proxy.echo.start("x", workflow_id="dest")  # no worker: it stays queued
    for i in range(N):
        proxy.arm(b"INSERT 0 1", b"messages")
        via_proxy.durable.send("dest", i, "t", idempotency_key=f"k{i}" if keyed else None)
    assert proxy.dropped == N  # every call's first commit lost its answer
    assert _messages(env, "dest") == [str(i) for i in range(N)]


def test_start_without_an_id_creates_one_workflow_per_call_and_runs_it(
    env: Env, workers: list[WorkerProcess], proxy: DropReplyProxy, via_proxy: SimpleNamespace
) -> None:
    start_worker(env, workers, APP)  # connects directly
    handles = []
    for i in range(N):
        proxy.arm(b"INSERT 0 1", b"workflows")
        handles.append(via_proxy.echo.start(i))
    assert proxy.dropped == N
    # published by the call itself, not 30 s later by the sweep
    assert [h.result(timeout=20) for h in handles] == list(range(N))
    assert env.sql("SELECT count(*) FROM {schema}.workflows") == [(N,)]


def test_set_event_whose_commit_answer_is_lost_is_recorded_once(
    env: Env, workers: list[WorkerProcess], proxy: DropReplyProxy, ns_direct: SimpleNamespace
) -> None:
    w = start_worker(env, workers, APP,
                     extra_env={"DBOS_TEST_DATABASE_URL": proxy.url(env.database_url)})  # fmt: skip
    proxy.arm(b"COMMIT", b"events")
    handle = ns_direct.events.start(workflow_id="ev")
    ns_direct.durable.send("ev", "go", "go")
    assert handle.result(timeout=30) == "go", w.describe()
    assert proxy.dropped == 1, w.describe()
    rows = env.sql("SELECT key, convert_from(value, 'UTF8') FROM {schema}.events "
                   "WHERE workflow_id = 'ev' ORDER BY key")  # fmt: skip
    assert rows == [("done", '{"value": "go"}'), ("stage", '"got go"')]
