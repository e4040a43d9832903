"""Bad input at every public entry point: each raises the documented error
of the dbos_celery.errors hierarchy, and nothing is written."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, signals

from dbos_celery import (
    ConfigurationError,
    ConflictingWorkflowIdError,
    Durable,
    DurableError,
    InvalidArgumentError,
    MessageTooLargeError,
    NonExistentWorkflowError,
    NotInWorkflowError,
    SchemaVersionError,
    SerializationError,
    WorkflowHandle,
    WorkflowNotRegisteredError,
    WorkflowNotResumableError,
)
from dbos_celery.runner import execute
from dbos_celery.store import migrations
from dbos_celery.validation import MAX_ID_LENGTH
from tests.apps import relay
from tests.support import DATABASE_URL, Env

BAD = InvalidArgumentError  # keeps the tables below on one line each
TABLES = ("workflows", "steps", "messages", "send_keys", "events")
LONG = "x" * (MAX_ID_LENGTH + 1)
SURROGATE = "topic-\ud800"  # a lone surrogate: not encodable as UTF-8


def counts(env: Env) -> dict[str, int]:
    return {t: int(env.sql(f"SELECT count(*) FROM {{schema}}.{t}")[0][0]) for t in TABLES}


def _with_dest(env: Env) -> SimpleNamespace:
    built = relay.build(env, max_message_bytes=1024)
    built.dest = "dest"  # a finished workflow to aim good-looking calls at
    built.echo.start("done", workflow_id=built.dest)
    execute(built.durable.services, built.dest, built.durable.workflows)
    return built


@pytest.fixture
def ns(env: Env) -> Iterator[SimpleNamespace]:
    built = _with_dest(env)
    try:
        yield built
    finally:
        relay.close(env, built)


@pytest.fixture(scope="module")
def shared(services: None) -> Iterator[tuple[Env, SimpleNamespace]]:
    """One schema for the calls that must write nothing (each is checked
    against the row counts just before it)."""
    e = Env(schema=f"t_{uuid.uuid4().hex[:12]}")
    e.create()
    built = _with_dest(e)
    try:
        yield e, built
    finally:
        relay.close(e, built)
        e.close()


@pytest.fixture
def bare(services: None) -> Iterator[Durable]:
    """A Durable that never connects (decorators touch no database)."""
    d = Durable(Celery("bare"), DATABASE_URL, schema="bad_input_unused")
    d.workflow("taken.echo")(_fn)
    try:
        yield d
    finally:
        d.close()


# --- Durable(...) options ---------------------------------------------------------

APP = Celery("bad-input")
NOT_A_NUMBER: list[Any] = ["1", None, math.nan, math.inf]
OPTION_CASES: list[tuple[str, dict[str, Any]]] = [
    ("database_url_int", {"database_url": 5}),
    ("database_url_unparsable", {"database_url": "not a url"}),
    ("database_url_sqlite_memory", {"database_url": "sqlite:///:memory:"}),
    ("engine_str", {"engine": "postgresql://"}),
    ("redis_url_int", {"redis_url": 6379}),
    ("schema_int", {"schema": 5}),
    ("schema_empty", {"schema": ""}),
    ("schema_quote", {"schema": 'a"b'}),
    ("schema_over_63_bytes", {"schema": "s" * 64}),
    ("serializer_unknown", {"serializer": "yaml-nope"}),
    ("serializer_none", {"serializer": None}),
    *[(f"poll_interval_{v!r}", {"poll_interval": v}) for v in [*NOT_A_NUMBER, 0]],
    ("heartbeat_interval_negative", {"heartbeat_interval": -1}),
    ("worker_timeout_none", {"worker_timeout": None}),
    ("worker_timeout_below_heartbeat", {"worker_timeout": 0.1}),
    ("sweep_interval_nan", {"sweep_interval": math.nan}),
    ("enqueued_timeout_str", {"enqueued_timeout": "30"}),
    ("call_redispatch_after_zero", {"call_redispatch_after": 0}),
    ("database_retry_timeout_negative", {"database_retry_timeout": -1}),
    ("max_recovery_attempts_float", {"max_recovery_attempts": 1.5}),
    ("max_recovery_attempts_bool", {"max_recovery_attempts": True}),
    ("max_message_bytes_zero", {"max_message_bytes": 0}),
    ("max_message_bytes_str", {"max_message_bytes": "1MB"}),
]


@pytest.mark.parametrize(("case", "options"), OPTION_CASES, ids=[c for c, _ in OPTION_CASES])
def test_bad_durable_option_is_a_configuration_error(
    services: None, case: str, options: dict[str, Any]
) -> None:
    """The error names the option to fix, and nothing connects or registers."""
    [option] = options
    given = {"database_url": DATABASE_URL, "schema": "bad_input_unused", **options}
    url = given.pop("database_url")
    receivers = len(signals.worker_process_init.receivers or [])
    with pytest.raises(ConfigurationError) as info:
        Durable(APP, url, **given)
    assert option in str(info.value)
    assert len(signals.worker_process_init.receivers or []) == receivers


def test_durable_needs_a_celery_app(services: None) -> None:
    with pytest.raises(ConfigurationError, match="celery.Celery"):
        Durable(None, DATABASE_URL)  # type: ignore[arg-type]


# --- decorators ------------------------------------------------------------------


def _fn() -> None:
    pass


DECORATOR_CASES: list[tuple[str, Callable[[Durable], object], type[Exception]]] = [
    ("workflow_name_int", lambda d: d.workflow(5)(_fn), BAD),  # type: ignore[arg-type]
    ("workflow_name_empty", lambda d: d.workflow("")(_fn), BAD),
    ("workflow_name_too_long", lambda d: d.workflow(LONG)(_fn), BAD),
    ("workflow_without_parentheses", lambda d: d.workflow(_fn), BAD),  # type: ignore[arg-type]
    ("workflow_of_non_callable", lambda d: d.workflow("w.x")(5), BAD),  # type: ignore[arg-type]
    ("workflow_timeout_str", lambda d: d.workflow("w.t", timeout="9")(_fn), BAD),  # type: ignore[arg-type]
    ("workflow_timeout_negative", lambda d: d.workflow("w.n", timeout=-1)(_fn), BAD),
    ("workflow_name_taken", lambda d: d.workflow("taken.echo")(_fn), ConfigurationError),
    ("step_name_int", lambda d: d.step(name=5)(_fn), BAD),  # type: ignore[arg-type]
    ("step_max_attempts_zero", lambda d: d.step(max_attempts=0)(_fn), BAD),
    ("step_max_attempts_str", lambda d: d.step(max_attempts="3")(_fn), BAD),  # type: ignore[arg-type]
    ("step_interval_str", lambda d: d.step(interval="1")(_fn), BAD),  # type: ignore[arg-type]
    ("step_interval_nan", lambda d: d.step(interval=math.nan)(_fn), BAD),
    ("step_interval_negative", lambda d: d.step(interval=-1)(_fn), BAD),
    ("step_backoff_none", lambda d: d.step(backoff=None)(_fn), BAD),  # type: ignore[arg-type]
    ("step_backoff_below_one", lambda d: d.step(backoff=0.5)(_fn), BAD),
    ("step_retry_on_int", lambda d: d.step(retry_on=5)(_fn), BAD),  # type: ignore[arg-type]
    ("step_retry_on_bare_class", lambda d: d.step(retry_on=ValueError)(_fn), BAD),  # type: ignore[arg-type]
    ("step_retry_on_non_exception", lambda d: d.step(retry_on=(int,))(_fn), BAD),  # type: ignore[arg-type]
    ("step_of_non_callable", lambda d: d.step()(5), BAD),  # type: ignore[arg-type]
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "attempt", "error"), DECORATOR_CASES, ids=[c for c, _, _ in DECORATOR_CASES]
)
def test_bad_decorator_option_raises_and_registers_nothing(
    bare: Durable, case: str, attempt: Callable[[Durable], object], error: type[Exception]
) -> None:
    workflows, tasks = dict(bare.workflows), set(bare.app.tasks)
    with pytest.raises(error):
        attempt(bare)
    assert bare.workflows == workflows
    assert set(bare.app.tasks) == tasks


# --- calls -----------------------------------------------------------------------

Call = Callable[[SimpleNamespace], object]
CALL_CASES: list[tuple[str, Call, type[Exception]]] = [
    # start / run a workflow
    ("start_id_int", lambda n: n.echo.start(1, workflow_id=5), BAD),
    ("start_id_empty", lambda n: n.echo.start(1, workflow_id=""), BAD),
    ("start_id_too_long", lambda n: n.echo.start(1, workflow_id=LONG), BAD),
    ("start_id_surrogate", lambda n: n.echo.start(1, workflow_id=SURROGATE), BAD),
    ("start_id_nul", lambda n: n.echo.start(1, workflow_id="a\x00b"), BAD),
    ("start_unserializable", lambda n: n.echo.start(object()), SerializationError),
    ("start_unserializable_kwarg", lambda n: n.echo.start(value={1, 2}), SerializationError),
    ("start_timeout_str", lambda n: n.echo.start(1, timeout="5"), BAD),
    ("start_timeout_nan", lambda n: n.echo.start(1, timeout=math.nan), BAD),
    ("start_id_of_another_workflow", lambda n: n.relay.start("t", workflow_id="dest"),
     ConflictingWorkflowIdError),
    ("call_unserializable", lambda n: n.echo(object()), SerializationError),
    # send
    ("send_to_none", lambda n: n.durable.send(None, "m"), BAD),
    ("send_to_unknown", lambda n: n.durable.send("no-such", "m"), NonExistentWorkflowError),
    ("send_to_unknown_with_key", lambda n: n.durable.send("no-such", "m", idempotency_key="k"),
     NonExistentWorkflowError),
    ("send_to_too_long", lambda n: n.durable.send(LONG, "m"), BAD),
    ("send_topic_int", lambda n: n.durable.send(n.dest, "m", 5), BAD),
    ("send_topic_bytes", lambda n: n.durable.send(n.dest, "m", b"t"), BAD),
    ("send_topic_empty", lambda n: n.durable.send(n.dest, "m", ""), BAD),
    ("send_topic_too_long", lambda n: n.durable.send(n.dest, "m", LONG), BAD),
    ("send_topic_surrogate", lambda n: n.durable.send(n.dest, "m", SURROGATE), BAD),
    ("send_topic_nul", lambda n: n.durable.send(n.dest, "m", "a\x00"), BAD),
    ("send_key_int", lambda n: n.durable.send(n.dest, "m", idempotency_key=7), BAD),
    ("send_key_surrogate", lambda n: n.durable.send(n.dest, "m", idempotency_key=SURROGATE),
     BAD),
    ("send_unserializable", lambda n: n.durable.send(n.dest, object()), SerializationError),
    ("send_oversize", lambda n: n.durable.send(n.dest, "x" * 1024), MessageTooLargeError),
    # workflow-only calls made outside a workflow
    ("recv_outside", lambda n: n.durable.recv("t", timeout=0), NotInWorkflowError),
    ("set_event_outside", lambda n: n.durable.set_event("k", 1), NotInWorkflowError),
    ("sleep_outside", lambda n: n.durable.sleep(0), NotInWorkflowError),
    ("call_outside", lambda n: n.durable.call("relay.echo", 1), NotInWorkflowError),
    ("gather_outside", lambda n: n.durable.gather(), NotInWorkflowError),
    ("workflow_id_outside", lambda n: n.durable.workflow_id, NotInWorkflowError),
    # task (checked where it is built)
    ("task_of_int", lambda n: n.durable.task(5), BAD),
    ("task_of_workflow", lambda n: n.durable.task(n.echo, 1), BAD),
    ("task_of_step", lambda n: n.durable.task(n.touch, "x"), BAD),
    ("task_unserializable", lambda n: n.durable.task("some.task", object()), SerializationError),
    # events
    ("get_event_id_none", lambda n: n.durable.get_event(None, "k", 0), BAD),
    ("get_event_key_int", lambda n: n.durable.get_event(n.dest, 5, 0), BAD),
    ("get_event_key_empty", lambda n: n.durable.get_event(n.dest, "", 0), BAD),
    ("get_event_key_surrogate", lambda n: n.durable.get_event(n.dest, SURROGATE, 0),
     BAD),
    ("get_event_timeout_none", lambda n: n.durable.get_event(n.dest, "k", None),
     BAD),
    ("get_event_timeout_negative", lambda n: n.durable.get_event(n.dest, "k", -1),
     BAD),
    # management
    ("retrieve_none", lambda n: n.durable.retrieve(None), BAD),
    ("retrieve_too_long", lambda n: n.durable.retrieve(LONG), BAD),
    ("retrieve_unknown", lambda n: n.durable.retrieve("no-such"), NonExistentWorkflowError),
    ("list_status_int", lambda n: n.durable.list_workflows(status=5), BAD),
    ("list_name_int", lambda n: n.durable.list_workflows(name=5), BAD),
    ("list_parent_int", lambda n: n.durable.list_workflows(parent=5), BAD),
    ("list_limit_negative", lambda n: n.durable.list_workflows(limit=-1), BAD),
    ("list_limit_bool", lambda n: n.durable.list_workflows(limit=True), BAD),
    ("list_offset_negative", lambda n: n.durable.list_workflows(offset=-1), BAD),
    ("list_offset_str", lambda n: n.durable.list_workflows(offset="2"), BAD),
    ("list_newest_first_str", lambda n: n.durable.list_workflows(newest_first="yes"),
     BAD),
    ("list_created_after_str", lambda n: n.durable.list_workflows(created_after="2024-01-01"),
     BAD),
    ("list_steps_none", lambda n: n.durable.list_steps(None), BAD),
    ("list_steps_unknown", lambda n: n.durable.list_steps("no-such"), NonExistentWorkflowError),
    ("cancel_int", lambda n: n.durable.cancel(5), BAD),
    ("cancel_unknown", lambda n: n.durable.cancel("no-such"), NonExistentWorkflowError),
    ("resume_none", lambda n: n.durable.resume(None), BAD),
    ("resume_unknown", lambda n: n.durable.resume("no-such"), NonExistentWorkflowError),
    ("resume_finished", lambda n: n.durable.resume(n.dest), WorkflowNotResumableError),
    ("fork_unknown", lambda n: n.durable.fork("no-such", 0), NonExistentWorkflowError),
    ("fork_step_str", lambda n: n.durable.fork(n.dest, "1"), BAD),
    ("fork_step_negative", lambda n: n.durable.fork(n.dest, -1), BAD),
    ("fork_new_id_int", lambda n: n.durable.fork(n.dest, 0, 5), BAD),
    ("fork_new_id_too_long", lambda n: n.durable.fork(n.dest, 0, LONG), BAD),
    ("fork_onto_itself", lambda n: n.durable.fork(n.dest, 0, n.dest), BAD),
    # handles
    ("result_timeout_str", lambda n: n.durable.retrieve(n.dest).result(timeout="1"),
     BAD),
    ("result_timeout_negative", lambda n: n.durable.retrieve(n.dest).result(timeout=-1),
     BAD),
    ("result_of_unknown", lambda n: WorkflowHandle(n.durable.services, "no-such").result(timeout=1),
     NonExistentWorkflowError),
    ("status_of_unknown", lambda n: WorkflowHandle(n.durable.services, "no-such").status(),
     NonExistentWorkflowError),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "attempt", "error"), CALL_CASES, ids=[c for c, _, _ in CALL_CASES]
)
def test_bad_call_raises_documented_error_and_writes_nothing(
    shared: tuple[Env, SimpleNamespace], case: str, attempt: Call, error: type[Exception]
) -> None:
    env, ns = shared
    before = counts(env)
    with pytest.raises(error) as info:
        attempt(ns)
    assert isinstance(info.value, DurableError)
    if isinstance(info.value, InvalidArgumentError):
        assert isinstance(info.value, TypeError)
    assert counts(env) == before


def test_ids_of_exactly_the_limit_are_accepted(env: Env, ns: SimpleNamespace) -> None:
    """MAX_ID_LENGTH is a limit, not an off-by-one: 255 characters work."""
    wid, topic = "w" * MAX_ID_LENGTH, "t" * MAX_ID_LENGTH
    ns.relay.start(topic, workflow_id=wid)
    ns.durable.send(wid, "m", topic, idempotency_key="k" * MAX_ID_LENGTH)
    execute(ns.durable.services, wid, ns.durable.workflows)
    assert ns.durable.retrieve(wid).result(timeout=5) == "m"
    assert ns.durable.get_event(wid, topic, timeout=0) == "m"


ODD_TOPICS = [
    "with spaces ",
    'it\'s "quoted" `back`',
    "ünïcödé — 中文 — Ελληνικά",
    "emoji 🚀🔥 and ZWJ 👩‍👩‍👧",
    "tab\tand\nnewline",
    "🚀" * MAX_ID_LENGTH,  # 255 characters, 1020 UTF-8 bytes
]


@pytest.mark.parametrize("topic", ODD_TOPICS, ids=range(len(ODD_TOPICS)))
def test_odd_but_valid_topics_round_trip(env: Env, ns: SimpleNamespace, topic: str) -> None:
    wid = f"odd-{topic[:20]}"
    ns.relay.start(topic, workflow_id=wid)
    ns.durable.send(wid, "other-topic", "another")
    ns.durable.send(wid, {"n": 1}, topic, idempotency_key=topic)
    ns.durable.send(wid, {"n": 1}, topic, idempotency_key=topic)  # a retry
    assert env.sql("SELECT topic FROM {schema}.messages WHERE topic <> 'another'") == [(topic,)]
    execute(ns.durable.services, wid, ns.durable.workflows)
    assert ns.durable.retrieve(wid).result(timeout=5) == {"n": 1}
    assert ns.durable.get_event(wid, topic, timeout=0) == {"n": 1}


def test_get_event_of_unknown_workflow_is_none_and_writes_nothing(
    env: Env, ns: SimpleNamespace
) -> None:
    """Documented: get_event waits for a value that may never come; an
    unknown id is not an error (the workflow may not be started yet)."""
    before = counts(env)
    assert ns.durable.get_event("no-such", "k", timeout=0) is None
    assert counts(env) == before


def test_unregistered_workflow_is_named_and_released(env: Env, ns: SimpleNamespace) -> None:
    """A process without the workflow's function raises
    WorkflowNotRegisteredError naming it, writes no checkpoint and gives
    the lease back so that a worker that has it can run it."""
    ns.relay.start("t", workflow_id="orphan")
    other = Durable(Celery("other"), env.database_url, schema=env.schema)
    try:
        before = counts(env)
        with pytest.raises(WorkflowNotRegisteredError, match="relay.relay"):
            execute(other.services, "orphan", other.workflows)
        assert counts(env) == before
        [(status, executor)] = env.sql(
            "SELECT status, executor_id FROM {schema}.workflows WHERE id = 'orphan'"
        )
        assert (status, executor) == ("ENQUEUED", None)
    finally:
        other.close()
    # the process that has it runs it
    ns.durable.send("orphan", "m", "t")
    execute(ns.durable.services, "orphan", ns.durable.workflows)
    assert ns.durable.retrieve("orphan").result(timeout=5) == "m"


def test_schema_newer_than_code_is_refused_before_writing(env: Env, ns: SimpleNamespace) -> None:
    env.sql(
        "INSERT INTO {schema}.schema_version (version) VALUES (%s)", migrations.LATEST_VERSION + 1
    )
    before = counts(env)
    newer = Durable(Celery("older-code"), env.database_url, schema=env.schema)
    wf = newer.workflow("older.echo")(_fn)
    try:
        for attempt in (newer.migrate, lambda: wf.start(), lambda: newer.send("dest", "m")):
            with pytest.raises(SchemaVersionError) as info:
                attempt()
            assert f"{migrations.LATEST_VERSION + 1}" in str(info.value)
    finally:
        newer.close()
    assert counts(env) == before
