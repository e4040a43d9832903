"""Pointing a Durable elsewhere for a block (``Durable.using``), and the
worker state of a process that runs one Celery worker after another (a
test's process): a cold shutdown stops the worker's hooks, the beater can
be stopped, and a second worker starts with a fresh slot counter.

Real Postgres and SQLite, Celery's own in-process test worker (threads pool,
in-memory broker; it stops cold when its block ends).
"""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, signals
from celery.contrib.testing.worker import start_worker
from celery.worker import state

from dbos_celery import ConfigurationError, Durable
from dbos_celery.config import Settings
from dbos_celery.recovery.liveness import Liveness
from dbos_celery.slots import SlotDemand
from dbos_celery.store.engine import Database
from dbos_celery.wakeup import LocalNotifier, RedisNotifier
from tests.support import REDIS_URL, Env, wait_for

TIMEOUT = 30.0


def _app() -> Celery:
    app = Celery(f"repoint-{uuid.uuid4().hex[:8]}", set_as_current=False)
    app.conf.update(
        broker_url="memory://",
        broker_transport="dbos_celery.testing.transport:MemoryTransport",
        broker_transport_options={"polling_interval": 0.05},
        result_backend="cache+memory://",
        worker_hijack_root_logger=False,
        task_default_queue=f"q-{uuid.uuid4().hex[:12]}",  # the memory broker is per process
    )
    return app


@contextmanager
def _worker(app: Celery) -> Iterator[Any]:
    """Celery's test worker for the app's default queue; stops cold."""
    with start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING",
        queues=[app.conf.task_default_queue], shutdown_timeout=TIMEOUT,
    ) as worker:  # fmt: skip
        yield worker


def _stop_warm(worker: Any) -> None:
    """What SIGTERM does: a warm shutdown, its bootsteps' ``stop``."""
    state.should_stop = 0
    try:
        assert worker.blueprint.shutdown_complete.wait(TIMEOUT)
    finally:
        state.should_stop = None


def _beaters(besides: Collection[int] = ()) -> set[int]:
    """This process's children that run the library's beater script, but
    ``besides`` (those other tests of this process may have left)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if parent == os.getpid() and b"beater.py" in command and int(pid) not in besides:
            found.add(int(pid))
    return found


def _sqlite_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


@pytest.fixture
def own(env: Env) -> Iterator[Durable]:
    """A Durable on this test's Postgres schema, its waits never parking on
    their own (only when the worker wants its slot back)."""
    d = Durable(_app(), env.database_url, schema=env.schema, poll_interval=0.1,
                park_after=3600)  # fmt: skip
    try:
        yield d
    finally:
        d.close()


# --- Durable.using ---------------------------------------------------------------


def test_a_block_runs_the_workflows_on_its_database_then_on_the_durables_own(
    own: Durable, env: Env, tmp_path: Path
) -> None:
    d = own

    @d.step()
    def double(x: int) -> int:
        return 2 * x

    @d.workflow()
    def twice(x: int) -> int:
        return double(double(x))

    own_store, own_settings = d.services.store, d.services.settings
    block = tmp_path / "block.db"
    with d.using(f"sqlite:///{block}", poll_interval=0.2, park_after=None) as same:
        assert same is d
        assert d.services.settings.poll_interval == 0.2
        assert d.services.settings.park_after is None
        assert d.services.settings.schema == env.schema  # left out: kept
        assert isinstance(d.services.notifier, LocalNotifier)
        with _worker(d.app):
            assert twice.start(5, workflow_id="in-block").result(timeout=TIMEOUT) == 20
        # a block without a database keeps the block's, in another schema
        # (on SQLite the schema names only the wakeup channels)
        with d.using(schema="other", redis_url=REDIS_URL):
            assert d.services.store.url.database == str(block)
            assert isinstance(d.services.notifier, RedisNotifier)
            assert d.services.notifier.channel == "dbos_celery:other:"
        assert d.services.settings.schema == env.schema
        assert [w.workflow_id for w in d.list_workflows()] == ["in-block"]
    assert d.services.store is own_store and d.services.settings is own_settings
    assert d.list_workflows() == []  # the block's workflow stayed in its database
    with _worker(d.app):
        assert twice.start(7, workflow_id="after").result(timeout=TIMEOUT) == 28
    assert [w.workflow_id for w in d.list_workflows()] == ["after"]
    assert env.sql("SELECT id, status FROM {schema}.workflows") == [("after", "SUCCESS")]
    assert _sqlite_rows(block, "SELECT id, status FROM workflows") == [("in-block", "SUCCESS")]


def test_a_block_without_a_database_url_moves_to_another_schema_of_the_same_one(
    own: Durable, env: Env
) -> None:
    d = own

    @d.workflow()
    def hello() -> str:
        return "hi"

    other = Env(schema=f"t_{uuid.uuid4().hex[:12]}")
    other.create()
    try:
        with d.using(schema=other.schema):
            assert hello() == "hi"  # run in this thread
        assert len(other.sql("SELECT id FROM {schema}.workflows")) == 1
        assert d.list_workflows() == []  # its own schema
    finally:
        other.close()


def test_transaction_steps_write_in_the_blocks_database(own: Durable, tmp_path: Path) -> None:
    d = own
    block = tmp_path / "block.db"
    with sqlite3.connect(block) as conn:
        conn.execute("CREATE TABLE notes (body text)")  # only in the block's database

    @d.transaction()
    def note(body: str) -> None:
        d.connection.exec_driver_sql("INSERT INTO notes (body) VALUES (?)", (body,))

    @d.workflow()
    def write() -> str:
        note("hello")
        return "done"

    with d.using(f"sqlite:///{block}"):
        assert write() == "done"
    assert _sqlite_rows(block, "SELECT body FROM notes") == [("hello",)]


@pytest.mark.parametrize(
    ("args", "options", "match"),
    [
        ((), {"poll_interval": 0}, "poll_interval"),
        ((), {"poll_intervall": 1.0}, r"using\(\).*poll_intervall"),
        ((), {"serializer": "pickle"}, "serializer"),
        ((), {"worker_timeout": 0.1}, "worker_timeout must exceed"),
        ((), {"retention": -1}, "retention"),
        ((), {"schema": "x" * 70}, "longer than"),
        ((), {"redis_url": 5}, "redis_url must be a str"),
        (("mysql://db/x",), {}, "postgresql:// or sqlite:///"),
        (("not a url",), {}, "not a valid URL"),
        ((), {"engine": "not an engine"}, "engine must be a SQLAlchemy Engine"),
    ],
)
def test_using_checks_its_arguments_before_anything_changes(
    own: Durable, args: tuple[Any, ...], options: dict[str, Any], match: str
) -> None:
    d = own
    sv = d.services
    store, settings, notifier, engine = sv.store, sv.settings, sv.notifier, sv.store.engine
    with pytest.raises(ConfigurationError, match=match):
        with d.using(*args, **options):
            raise AssertionError("the block ran")
    assert (sv.store, sv.settings, sv.notifier) == (store, settings, notifier)
    assert sv.store.engine is engine  # not even closed


def test_calls_are_sent_again_after_the_blocks_call_redispatch_after(
    env: Env, tmp_path: Path
) -> None:
    d = Durable(_app(), env.database_url, schema=env.schema, call_redispatch_after=3600)
    name = f"remote-{uuid.uuid4().hex[:8]}"
    d.app.conf.task_routes = {name: {"queue": "nobody"}}  # no worker consumes it

    @d.app.task(name=name)
    def remote() -> int:
        return 1

    @d.workflow()
    def calls() -> int:
        return int(d.call(remote))

    sent: list[str] = []

    def count(sender: Any = None, headers: Any = None, **_: Any) -> None:
        if sender == remote.name:
            sent.append(headers["id"])

    signals.before_task_publish.connect(count, weak=False)
    try:
        block = f"sqlite:///{tmp_path / 'block.db'}"
        with d.using(block, call_redispatch_after=0.1, poll_interval=0.1):
            with _worker(d.app):
                calls.start(workflow_id="c")
                wait_for(lambda: len(sent) >= 2, TIMEOUT, lambda: f"sent: {sent}")
        assert set(sent) == {"dbos-c-0"}  # the same call, sent again
    finally:
        signals.before_task_publish.disconnect(count)
        d.close()


def test_a_worker_in_a_block_has_its_own_beater_killed_when_the_block_ends(
    own: Durable, tmp_path: Path
) -> None:
    d = own

    @d.workflow()
    def hello() -> str:
        return "hi"

    others = _beaters()
    with d.using(f"sqlite:///{tmp_path / 'block.db'}"):
        with _worker(d.app):
            assert hello.start(workflow_id="a").result(timeout=TIMEOUT) == "hi"
            first = _beaters(others)
            assert len(first) == 1
    assert _beaters(others) == set()  # the block's worker's beater ended with it
    with _worker(d.app):
        assert hello.start(workflow_id="b").result(timeout=TIMEOUT) == "hi"
        second = _beaters(others)
        assert len(second) == 1 and second != first  # a new one
    d.close()
    assert _beaters(others) == set()


def _waits_for_go(d: Durable) -> Any:
    """A workflow that sets the event "waiting", then returns what it recvs
    on topic "go"."""

    @d.workflow()
    def waits() -> Any:
        d.set_event("waiting", True)
        return d.recv("go", timeout=TIMEOUT)

    return waits


# --- one worker after another in a process ------------------------------------------


def test_a_cold_shutdown_parks_the_waiting_workflows_and_stops_the_workers_threads(
    own: Durable,
) -> None:
    d = own
    waits = _waits_for_go(d)

    before = set(threading.enumerate())
    with _worker(d.app):  # Celery's test worker: a cold shutdown
        handle = waits.start(workflow_id="w")
        assert d.get_event("w", "waiting", timeout=TIMEOUT) is True
    # the worker's hooks stopped: the wait parked (its slot was wanted back),
    # and none of the library's threads goes on
    assert handle.status().status == "WAITING"
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert [n for n in left if n.startswith("dbos-celery")] == []
    d.send("w", "go!", topic="go")
    with _worker(d.app):
        assert handle.result(timeout=TIMEOUT) == "go!"


def test_a_second_worker_in_the_process_does_not_see_the_first_ones_shutdown(
    own: Durable,
) -> None:
    d = own
    waits = _waits_for_go(d)

    with _worker(d.app) as first:
        _stop_warm(first)
    assert d.services.slots.wanted()  # the first one's shutdown
    with _worker(d.app):
        assert not d.services.slots.wanted()
        handle = waits.start(workflow_id="w")
        assert d.get_event("w", "waiting", timeout=TIMEOUT) is True
        assert not d.services.slots.wanted()  # so its wait holds its slot
        d.send("w", "go!", topic="go")
        assert handle.result(timeout=TIMEOUT) == "go!"

    counter = SlotDemand()
    counter.create(2)
    counter.shutting_down()
    counter.create(2)
    assert not counter.wanted()


def test_liveness_stop_kills_the_beater_and_closes_its_board(tmp_path: Path) -> None:
    store = Database(f"sqlite:///{tmp_path / 'live.db'}")
    store.migrate()
    liveness = Liveness(store, Settings())
    others = _beaters()
    liveness.start(2)
    assert liveness.wait_ready()
    assert len(_beaters(others)) == 1
    board = liveness.board
    assert board is not None
    inode = os.fstat(board.fd).st_ino

    liveness.stop()
    assert _beaters(others) == set() and liveness.board is None
    del board
    gc.collect()  # (the board's memory map holds a descriptor until dropped)
    assert inode not in _open_inodes()

    liveness.start(2)  # a fresh start: a new board and beater
    try:
        assert liveness.wait_ready() and len(_beaters(others)) == 1
    finally:
        liveness.stop()
    assert _beaters(others) == set()


def _open_inodes() -> set[int]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
        except OSError:
            continue
    return found
