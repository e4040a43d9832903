"""The checkpoint of a step with ``defer_checkpoint=True`` goes in the same
transaction as the workflow's next durable write; a step's own commit
otherwise. Read off Postgres's ``xmin`` (the transaction that wrote a row
version), with workflows run inline in this process."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dbos_celery import InvalidArgumentError
from tests.apps.held import build
from tests.support import BACKENDS, Env, app_fixture

ns = app_fixture(build)


@pytest.fixture
def _postgres(env: Env) -> None:
    if env.backend != "postgres":
        pytest.skip("xmin is Postgres's")


@BACKENDS
def test_deferred_checkpoints_are_all_recorded(env: Env, ns: SimpleNamespace) -> None:
    """On either database: with the final status (one step), with a send,
    and before the next step."""
    ns.one_step.start(workflow_id="dest")  # no worker: it stays queued
    assert ns.one_step() == "a"
    assert ns.step_then_send("dest") == "a"
    assert ns.two_steps(False) == ["a", "b"]
    names = env.sql("SELECT w.name, s.name FROM {schema}.steps s JOIN {schema}.workflows w "
                    "ON w.id = s.workflow_id ORDER BY w.name, s.seq")  # fmt: skip
    assert [tuple(r) for r in names] == [
        ("held.one_step", "held.effect"),
        ("held.step_then_send", "held.effect"),
        ("held.step_then_send", "durable.send"),
        ("held.two_steps", "held.effect"),
        ("held.two_steps", "held.effect"),
    ]


def _xmin(env: Env, table: str, where: str, *params: object) -> list[str]:
    rows = env.sql(f"SELECT xmin::text FROM {{schema}}.{table} WHERE {where}", *params)
    return [r[0] for r in rows]


def _step_xmins(env: Env, workflow_id: str) -> list[str]:
    return _xmin(env, "steps", "workflow_id = %s ORDER BY seq", workflow_id)


@pytest.mark.usefixtures("_postgres")
def test_by_default_a_step_commits_before_it_returns(env: Env, ns: SimpleNamespace) -> None:
    assert ns.one_plain_step() == "a"
    [wid] = [r[0] for r in env.sql("SELECT id FROM {schema}.workflows")]
    assert _step_xmins(env, wid) != _xmin(env, "workflows", "id = %s", wid)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_defer_checkpoint_takes_only_a_bool(ns: SimpleNamespace, value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="defer_checkpoint must be True or False"):
        ns.durable.step(defer_checkpoint=value)


@pytest.mark.usefixtures("_postgres")
def test_the_last_step_commits_with_the_final_status(env: Env, ns: SimpleNamespace) -> None:
    assert ns.one_step() == "a"
    [wid] = [r[0] for r in env.sql("SELECT id FROM {schema}.workflows")]
    assert _step_xmins(env, wid) == _xmin(env, "workflows", "id = %s", wid)


@pytest.mark.usefixtures("_postgres")
def test_a_step_commits_with_the_send_after_it(env: Env, ns: SimpleNamespace) -> None:
    ns.one_step.start(workflow_id="dest")  # no worker: it stays queued
    assert ns.step_then_send("dest") == "a"
    [wid] = [r[0] for r in env.sql("SELECT id FROM {schema}.workflows WHERE id <> 'dest'")]
    step, send = _step_xmins(env, wid)
    assert step == send == _xmin(env, "messages", "destination_id = 'dest'")[0]


@pytest.mark.usefixtures("_postgres")
def test_a_step_is_written_before_the_next_step_body_runs(env: Env, ns: SimpleNamespace) -> None:
    assert ns.two_steps(False) == ["a", "b"]
    [wid] = [r[0] for r in env.sql("SELECT id FROM {schema}.workflows")]
    a, b = _step_xmins(env, wid)
    assert a != b
    assert [b] == _xmin(env, "workflows", "id = %s", wid)
