"""Security: nothing is unpickled from the database by default, SQL goes
only through bound parameters, and database passwords stay out of errors,
reprs and logs."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import Celery

from dbos_celery import DatabaseUnavailableError, Durable, SerializationError
from dbos_celery.runner import execute
from tests.apps import relay
from tests.support import Env

TABLES = ("schema_version", "workflows", "steps", "messages", "send_keys", "events")


@pytest.fixture
def ns(env: Env) -> Iterator[SimpleNamespace]:
    built = relay.build(env)
    try:
        yield built
    finally:
        relay.close(env, built)


# --- (a) nothing is unpickled from the database ---------------------------------


class _Armed:
    """Unpickling this creates ``path``: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


@pytest.fixture
def armed(tmp_path: Path) -> tuple[bytes, Path]:
    """A pickle whose loading creates a marker file, checked to be live."""
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Armed(marker))
    pickle.loads(payload).close()  # the payload really is armed...
    assert marker.exists()
    marker.unlink()  # ...and the marker is gone again before the test
    return payload, marker


def test_default_serializer_is_json(env: Env) -> None:
    d = Durable(Celery("sec"), env.database_url, schema=env.schema)
    try:
        assert d.services.codec.name == "json"
    finally:
        d.close()


def test_pickle_planted_in_workflow_inputs_is_not_executed(
    env: Env, ns: SimpleNamespace, armed: tuple[bytes, Path]
) -> None:
    payload, marker = armed
    ns.echo.start("harmless", workflow_id="planted")
    env.sql("UPDATE {schema}.workflows SET inputs = %s WHERE id = 'planted'", payload)
    execute(ns.durable.services, "planted", ns.durable.workflows)  # the worker reads the inputs
    with pytest.raises(SerializationError):
        ns.durable.retrieve("planted").result(timeout=5)
    assert ns.durable.retrieve("planted").status().status == "ERROR"
    assert not marker.exists()


def test_pickle_planted_in_step_output_and_event_is_not_executed(
    env: Env, ns: SimpleNamespace, armed: tuple[bytes, Path]
) -> None:
    payload, marker = armed
    ns.relay.start("t", workflow_id="planted")
    # a recorded recv (seq 0) and a recorded step output (seq 2) holding the pickle
    env.sql(
        "INSERT INTO {schema}.steps (workflow_id, seq, name, output) VALUES "
        "('planted', 0, 'durable.recv', %s), ('planted', 2, 'relay.touch', %s)",
        payload,
        payload,
    )
    env.sql(
        "INSERT INTO {schema}.events (workflow_id, key, value) VALUES ('planted', 'e', %s)",
        payload,
    )
    with pytest.raises(SerializationError):
        ns.durable.list_steps("planted")
    with pytest.raises(SerializationError):
        ns.durable.get_event("planted", "e", timeout=0)
    execute(ns.durable.services, "planted", ns.durable.workflows)  # replays the recorded recv
    with pytest.raises(SerializationError):
        ns.durable.retrieve("planted").result(timeout=5)
    assert not marker.exists()


# --- (b) SQL only through bound parameters ----------------------------------------

SQLISH = [
    "x'); DROP TABLE workflows;--",
    "'; DELETE FROM messages; SELECT '",
    "%s",
    "%(x)s %% %",
    "$1 $2::text",
    "back\\slash\\'\\\\",
    "\"double\" 'single' `back`",
    "'' OR 1=1 --",
    ":name ? ?? {schema}",
]


def _tables(env: Env) -> list[str | None]:
    return [env.sql("SELECT to_regclass(%s)::text", f'"{env.schema}".{t}')[0][0] for t in TABLES]


@pytest.mark.parametrize("text", SQLISH, ids=range(len(SQLISH)))
def test_sql_looking_ids_topics_and_keys_round_trip(
    env: Env, ns: SimpleNamespace, text: str
) -> None:
    """The same string as workflow id, topic, idempotency key and event key
    (and as list filters) is stored and read back verbatim."""
    d = ns.durable
    d.migrate()
    tables = _tables(env)
    assert None not in tables
    ns.relay.start(text, workflow_id=text)
    d.send(text, text, text, idempotency_key=text)
    d.send(text, text, text, idempotency_key=text)  # a retry: stored once
    assert env.sql("SELECT destination_id, topic, payload FROM {schema}.messages") == [
        (text, text, d.services.codec.dumps(text))
    ]
    assert env.sql("SELECT idempotency_key FROM {schema}.send_keys") == [(text,)]
    execute(d.services, text, d.workflows)
    assert d.retrieve(text).result(timeout=5) == text
    assert d.get_event(text, text, timeout=0) == text
    assert [w.workflow_id for w in d.list_workflows()] == [text]
    assert [w.workflow_id for w in d.list_workflows(name="relay.relay")] == [text]
    assert d.list_workflows(name=text) == d.list_workflows(status=text) == []
    assert d.list_workflows(parent=text) == []
    assert [st.name for st in d.list_steps(text)][:1] == ["durable.recv"]
    assert d.cancel(text) is False  # finished: a no-op, found by its id
    forked = d.fork(text, 0, text + "-fork")
    assert forked.workflow_id == text + "-fork"
    assert _tables(env) == tables
    assert env.sql("SELECT count(*) FROM {schema}.workflows")[0][0] == 2


# --- (c) passwords stay out of errors, reprs and logs -----------------------------

PASSWORD = "s3cr3t-pw"
DEAD_URL = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test"


def _chain(exc: BaseException | None) -> str:
    parts = []
    while exc is not None:
        parts += [str(exc), repr(exc), *(str(a) for a in exc.args)]
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def test_password_not_in_errors_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="dbos_celery")
    d = Durable(Celery("sec"), DEAD_URL, schema="sec", database_retry_timeout=0.3)
    try:
        texts = [
            repr(d),
            repr(d.services.store),
            str(d.services.store.url),
            repr(d.services.store.url),
            repr(vars(d.services.store)),
        ]
        for attempt in (d.migrate, lambda: d.list_workflows(), lambda: d.send("w", "m")):
            with pytest.raises(DatabaseUnavailableError) as info:
                attempt()
            texts.append(_chain(info.value))
            assert "127.0.0.1" in str(info.value)  # the error still says where
        d.services.store._migrated = True  # also the retry loop of an ordinary statement
        with pytest.raises(DatabaseUnavailableError) as info:
            d.retrieve("w")
        texts.append(_chain(info.value))
        assert any("retrying" in r.getMessage() for r in caplog.records)
    finally:
        d.close()
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.args) for r in caplog.records]
    texts += [caplog.text]
    leaks = [t for t in texts if PASSWORD in t]
    assert not leaks
