"""Transaction steps (``@durable.transaction()``): the body's database
writes and its checkpoint commit together, so the write happens exactly
once: a worker SIGKILLed before the commit leaves nothing (the replay writes
it once), one killed after it leaves the one write (the replay returns the
recorded output), and of two runners racing (the first frozen inside the
body, the second taking over) only one commit lands. Payments are counted in
their table; body runs in the ledger (written outside the transaction)."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest

from dbos_celery import NotInTransactionError
from tests.apps.intx import build, mark, marks
from tests.support import (
    BACKENDS,
    Env,
    WorkerProcess,
    app_fixture,
    open_gate,
    start_worker,
    wait_for,
)

ns = app_fixture(build)
APP = "tests.apps.intx"


@pytest.fixture
def payments(env: Env) -> Env:
    env.sql("CREATE TABLE {schema}.payments (order_id text)".replace(
        "{schema}.", "" if env.backend == "sqlite" else "{schema}."))  # fmt: skip
    return env


def _paid(env: Env, order: str) -> int:
    table = "payments" if env.backend == "sqlite" else "{schema}.payments"
    return int(env.sql(f"SELECT count(*) FROM {table} WHERE order_id = '{order}'")[0][0])


@BACKENDS
def test_a_transaction_step_writes_once_and_a_kill_before_its_commit_leaves_nothing(
    env: Env, payments: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    first = start_worker(env, workers, APP, name="first")
    handle = ns.checkout.start("o-1", "pay", workflow_id="c-1")
    wait_for(lambda: "pay" in marks(env.schema, "c-1"), 30, first.describe)
    first.kill()  # inside the body: its insert is not committed
    assert _paid(env, "o-1") == 0
    mark(env.schema, "c-1", "open:pay")
    second = start_worker(env, workers, APP, name="second")
    assert handle.result(timeout=30) == 1, second.describe()
    assert _paid(env, "o-1") == 1
    assert marks(env.schema, "c-1").count("pay") == 2  # the killed body, and the replay's
    assert [s.name for s in ns.durable.list_steps("c-1")] == ["intx.pay", "intx.after"]


def test_a_kill_after_a_transaction_step_committed_does_not_write_again(
    env: Env, payments: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    first = start_worker(env, workers, APP, name="first")
    handle = ns.checkout.start("o-2", "after", workflow_id="c-2")
    wait_for(lambda: "after" in env.ledger("c-2"), 30, first.describe)
    first.kill()  # in the step after: the payment and its checkpoint committed
    open_gate(env.schema, "c-2", "after")
    second = start_worker(env, workers, APP, name="second")
    assert handle.result(timeout=30) == 1, second.describe()
    assert _paid(env, "o-2") == 1
    assert marks(env.schema, "c-2").count("pay") == 1  # replayed from its checkpoint


def test_of_two_runners_racing_through_a_transaction_step_one_commit_lands(
    env: Env, payments: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """The first runner is frozen (SIGSTOP) inside the body with its insert
    done and uncommitted; the second takes the workflow over and commits;
    the first, resumed, cannot commit its own (lease lost, or its session
    ended by the server): one payment."""
    first = start_worker(env, workers, APP, name="first", concurrency=1)
    handle = ns.checkout.start("o-3", "", 3.0, workflow_id="c-3")  # the body holds 3 s
    wait_for(lambda: "pay" in marks(env.schema, "c-3"), 30, first.describe)
    os.killpg(first.proc.pid, signal.SIGSTOP)
    try:
        second = start_worker(env, workers, APP, name="second", concurrency=1)
        assert handle.result(timeout=60) == 1, second.describe()
    finally:
        os.killpg(first.proc.pid, signal.SIGCONT)
    wait_for(lambda: "c-3: " in first.log_path.read_text(), 30, first.describe)
    assert marks(env.schema, "c-3").count("pay") >= 2  # both bodies ran
    assert _paid(env, "o-3") == 1, first.describe()


@BACKENDS
def test_a_failing_transaction_step_rolls_back_and_records_its_error(
    env: Env, payments: Env, ns: SimpleNamespace
) -> None:
    assert ns.checkout("o-4", fail=True) == "declined o-4"  # in this process
    assert _paid(env, "o-4") == 0
    steps = ns.durable.list_steps(ns.durable.list_workflows()[0].workflow_id)
    assert [(s.name, s.error) for s in steps] == [("intx.pay", "PaymentDeclined: o-4")]


@BACKENDS
def test_outside_a_workflow_a_transaction_step_is_one_transaction(
    env: Env, payments: Env, ns: SimpleNamespace
) -> None:
    assert ns.pay("none", "o-5") == 1
    with pytest.raises(Exception, match="o-6"):
        ns.pay("none", "o-6", fail=True)
    assert (_paid(env, "o-5"), _paid(env, "o-6")) == (1, 0)
    with pytest.raises(NotInTransactionError, match="inside the body"):
        _ = ns.durable.connection
