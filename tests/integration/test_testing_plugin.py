"""The pytest plugin for users (``dbos_celery.testing``), tested the way a
user meets it: inner pytest sessions (``pytester``, each in a subprocess)
of test files written as a user writes them, against a user's module whose
own database and broker are unreachable, so that a test that ran anywhere
but on the plugin's throwaway database and in-memory broker would fail.

The example of docs/testing.md (``examples/testing``) runs here too, on
SQLite and on Postgres.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import psycopg
import pytest

from tests.support import DATABASE_URL, REDIS_URL, ROOT

pytest_plugins = ["pytester"]

EXAMPLE = ROOT / "examples" / "testing"

# A user's app module: its own database and broker are unreachable (port
# 1), its workflows routed to a queue of their own, a Celery task called
# with durable.call routed to another; its waits never park.
SHOP = """
from celery import Celery

from dbos_celery import Durable

app = Celery("shop", broker="redis://127.0.0.1:1/0")
app.conf.task_routes = {"shop.price": {"queue": "shop-tasks"}, "shop.*": {"queue": "shop"}}
durable = Durable(
    app, "postgresql://shop@127.0.0.1:1/shop", schema="shop", database_retry_timeout=1.0,
    park_after=None,
)


@app.task(name="shop.price")
def price(item):
    return {"desk": 120}[item]


@durable.step(name="shop.reserve")
def reserve(item):
    return f"r-{item}"


@durable.workflow(name="shop.order")
def order(item):
    reservation = reserve(item)
    amount = durable.call(price, item)
    durable.set_event("waiting", True)
    decision = durable.recv("approval", timeout=60)
    return {"reservation": reservation, "amount": amount, "decision": decision}
"""

SHOP_CONFTEST = """
import pytest

pytest_plugins = ["dbos_celery.testing"]


@pytest.fixture
def durable_instance():
    from shop import durable

    return durable
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose sessions import this repository's examples and see
    none of the library's settings from the environment."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    for var in (
        "DBOS_CELERY_TEST_DATABASE_URL", "DBOS_CELERY_DATABASE_URL", "DBOS_CELERY_REDIS_URL",
        "DATABASE_URL", "REDIS_URL", "BROKER_URL",
    ):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "no:xdist", "-p", "no:cacheprovider", "-v", *args, timeout=180
    )  # fmt: skip


def copy_example(pytester: pytest.Pytester, extra_conftest: str = "") -> None:
    conftest = (EXAMPLE / "conftest.py").read_text() + extra_conftest
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_checkout_example=(EXAMPLE / "test_checkout_example.py").read_text())


def sqlite_workflows(root: Path) -> dict[Path, list[tuple[str, str]]]:
    """The workflows (id, status) in each test's SQLite file under ``root``."""
    found = {}
    for path in sorted(root.rglob("dbos_test_*.sqlite")):
        with sqlite3.connect(path) as conn:
            found[path] = conn.execute("SELECT id, status FROM workflows ORDER BY id").fetchall()
    return found


def schemas_named(names: list[str]) -> list[str]:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name = ANY(%s)",
            (names,),
        ).fetchall()
    return [r[0] for r in rows]


# --- the documented example ----------------------------------------------------


def test_example_tests_pass_each_on_a_sqlite_file_of_its_own(inner: pytest.Pytester) -> None:
    copy_example(inner)
    result = run(inner)
    result.assert_outcomes(passed=4)
    files = sqlite_workflows(inner.path)
    assert len(files) == 4, files  # one per test, each in its own tmp_path
    assert len({path.parent for path in files}) == 4
    workflows = sorted(w for found in files.values() for w in found)
    assert workflows == [("order-1", "SUCCESS"), ("order-2", "SUCCESS"), ("order-3", "SUCCESS")]
    assert all(len(found) <= 1 for found in files.values())  # nothing shared
    # the example app's own database (a SQLite file in the working
    # directory, made absolute at import) was never opened
    assert not (inner.path / "dbos_celery.sqlite").exists()


RECORD_SCHEMAS = """

import os


@pytest.fixture(autouse=True)
def _record_schema(request):
    db = request.getfixturevalue("durable_database")
    yield
    with open(os.environ["SCHEMAS_FILE"], "a") as out:
        out.write(f"{db.schema} {db.exists()}\\n")
"""

FAILING = """
from examples.checkout.app import checkout


def test_fails_after_recording(durable_run, assert_steps):
    assert durable_run(checkout, "o-7", 0.1, workflow_id="order-7") == "cancelled"
    assert_steps("order-7", ["checkout.charge"])
"""


def test_example_tests_pass_on_postgres_in_fresh_schemas_dropped_afterwards(
    services: None, inner: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "schemas.txt"
    monkeypatch.setenv("SCHEMAS_FILE", str(record))
    copy_example(inner, RECORD_SCHEMAS)
    inner.makepyfile(test_failing=FAILING)
    result = run(inner, "--dbos-database-url", DATABASE_URL)
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*test_failing.py::test_fails_after_recording FAILED*"])
    lines = [line.split() for line in record.read_text().splitlines()]
    names = [name for name, _ in lines]
    assert len(set(names)) == 5 and all(n.startswith("dbos_test_") for n in names), lines
    assert all(existed == "True" for _, existed in lines), lines  # there during each test
    assert schemas_named(names) == []  # and dropped after it, the failed test's too
    assert sqlite_workflows(inner.path) == {}  # no SQLite file either


def test_database_url_may_come_from_the_environment(
    services: None, inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBOS_CELERY_TEST_DATABASE_URL", DATABASE_URL)
    inner.makeconftest(SHOP_CONFTEST)
    inner.makepyfile(
        shop=SHOP,
        test_env=f"""
        def test_on_postgres(durable, durable_database):
            assert durable_database.backend == "postgres"
            assert durable_database.url == {DATABASE_URL!r}
            assert durable.list_workflows() == []
        """,
    )
    run(inner).assert_outcomes(passed=1)


def test_a_database_url_that_is_not_postgres_is_a_usage_error(inner: pytest.Pytester) -> None:
    inner.makeconftest(SHOP_CONFTEST)
    inner.makepyfile(shop=SHOP, test_x="def test_x(durable): pass")
    result = run(inner, "--dbos-database-url", "sqlite:///elsewhere.db")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--dbos-database-url*must be a postgresql:// URL*"])


# --- a user's module, its own database and broker unreachable -------------------

WAITS_FOR_MESSAGE = """
import os

from shop import app, durable, order, price, reserve


def test_order_waits_for_the_approval_the_test_sends(
    durable_worker, durable_send, assert_steps
):
    handle = order.start("desk", workflow_id="order-desk")
    assert durable.get_event("order-desk", "waiting", timeout=30) is True  # at its recv now
    durable_send(handle, "approved", topic="approval")
    assert handle.result(timeout=30) == {
        "reservation": "r-desk", "amount": 120, "decision": "approved"
    }
    assert_steps(handle, [
        (reserve, "r-desk"),
        (price, 120),  # a Celery task: its durable.call
        "durable.set_event",
        ("durable.recv", "approved"),
    ])


def test_app_and_durable_are_their_own_again_after_a_test():
    assert app.conf.broker_url == "redis://127.0.0.1:1/0"
    assert app.conf.broker_transport is None
    assert durable.services.settings.schema == "shop"
    assert durable.services.store.url.port == 1
    assert beaters() == []  # the worker's beater ended with it


def beaters():
    # this process's children that run the library's beater script
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if parent == os.getpid() and b"beater.py" in command:
            found.append(int(pid))
    return found
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_workflow_waits_for_a_message_sent_by_the_test(
    inner: pytest.Pytester, request: pytest.FixtureRequest, backend: str
) -> None:
    args: list[str] = []
    if backend == "postgres":
        request.getfixturevalue("services")
        args = ["--dbos-database-url", DATABASE_URL]
    inner.makeconftest(SHOP_CONFTEST)
    inner.makepyfile(shop=SHOP, test_shop=WAITS_FOR_MESSAGE)
    result = run(inner, *args)
    result.assert_outcomes(passed=2)


MISMATCH = """
from examples.checkout.app import checkout


def test_wrong_output(durable_worker, durable_send, assert_steps):
    handle = checkout.start("o-9", workflow_id="order-9")
    durable_send(handle, "paid", topic="payment_status")
    assert handle.result(timeout=30) == "fulfilled"
    assert_steps(handle, [("durable.recv", "paid"), ("checkout.charge", "ch_wrong")])


def test_step_missing(durable_run, assert_steps):
    assert durable_run(checkout, "o-8", 0.1, workflow_id="order-8") == "cancelled"
    assert_steps("order-8", ["durable.recv", "checkout.charge"])


def test_not_finished(durable_run):
    durable_run(checkout, "o-6", 60, workflow_id="order-6", result_timeout=0.5)
"""


def test_failing_user_tests_say_what_the_workflow_recorded(inner: pytest.Pytester) -> None:
    copy_example(inner)
    inner.makepyfile(test_checkout_example=MISMATCH)
    result = run(inner)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*workflow 'order-9' recorded other steps than expected:",
            "*  expected * recorded",
            "*  durable.recv -> 'paid' * 0: durable.recv -> 'paid'",
            "*! checkout.charge -> 'ch_wrong' * 2: checkout.charge -> 'ch_o-9'",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*workflow 'order-8' recorded other steps than expected:",
            "*  expected * recorded",
            "*  durable.recv * 0: durable.recv -> None",
            "*! checkout.charge * (nothing)",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*workflow 'order-6' (checkout.checkout) did not finish within 0.5 s: status *"]
    )
    # the worker stopped warm at the end of that test: the workflow still
    # waiting parked, and nothing of it ran on after the test (elsewhere)
    workflows = sorted(w for found in sqlite_workflows(inner.path).values() for w in found)
    assert ("order-6", "WAITING") in workflows, workflows
    assert not (inner.path / "dbos_celery.sqlite").exists()


MARKED = """
import os
import time

import pytest

from dbos_celery.testing import TEST_CELERY_CONFIG
from shop import app, order


@pytest.fixture
def durable_celery_config():
    return {**TEST_CELERY_CONFIG, "task_time_limit": 30}


def wait_status(handle, wanted):
    for _ in range(1000):
        if handle.status().status == wanted:
            return
        time.sleep(0.02)
    raise AssertionError(f"never {wanted}: {handle.status()}")


@pytest.mark.durable(park_after=0)
def test_marker_sets_options_for_one_test(durable_worker, durable_send):
    handle = order.start("desk", workflow_id="order-1")
    wait_status(handle, "WAITING")  # parked at its recv at once
    durable_send(handle, "ok", topic="approval")
    assert handle.result(timeout=30)["decision"] == "ok"


def test_other_tests_keep_the_durables_own_options(durable):
    assert durable.services.settings.park_after is None  # shop's: never park
    assert type(durable.services.notifier).__name__ == "LocalNotifier"
    assert app.conf.task_time_limit == 30  # durable_celery_config, overridden


@pytest.mark.durable(redis_url=os.environ["TEST_REDIS_URL"])
def test_wakeups_through_redis(durable, durable_worker, durable_send):
    assert type(durable.services.notifier).__name__ == "RedisNotifier"
    handle = order.start("desk", workflow_id="order-2")
    assert durable.get_event("order-2", "waiting", timeout=30) is True
    durable_send(handle, "ok", topic="approval")
    assert handle.result(timeout=30)["decision"] == "ok"
"""

INLINE = """
from dbos_celery.testing import start_durable_worker


def test_inline_workflow(durable, durable_steps):
    @durable.step()
    def double(x):
        return x * 2

    @durable.workflow()
    def twice(x):
        return double(double(x))

    with start_durable_worker(durable):
        assert twice.start(5, workflow_id="w").result(timeout=30) == 20
    assert [s.output for s in durable_steps("w")] == [10, 20]


def test_durable_run_refuses_a_workflow_of_another_durable(durable_run):
    from celery import Celery
    from dbos_celery import Durable

    other = Durable(Celery("other", set_as_current=False), "sqlite:///other.db")

    @other.workflow()
    def alien():
        return 1

    try:
        durable_run(alien)
    except TypeError as exc:
        assert "not a workflow of the Durable that durable_instance returns" in str(exc)
    else:
        raise AssertionError("durable_run ran another Durable's workflow")
"""


def test_durable_marker_sets_options_for_one_test(
    services: None, inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_REDIS_URL", REDIS_URL)
    inner.makeconftest(SHOP_CONFTEST)
    inner.makepyfile(shop=SHOP, test_marked=MARKED)
    run(inner).assert_outcomes(passed=3)


def test_workflows_defined_in_tests_run_on_the_default_durable(inner: pytest.Pytester) -> None:
    inner.makeconftest('pytest_plugins = ["dbos_celery.testing"]')
    inner.makepyfile(test_inline=INLINE)
    run(inner).assert_outcomes(passed=2)
    assert not (inner.path / "dbos_celery.sqlite").exists()


# --- without pytest's fixtures ---------------------------------------------------


def test_bind_refuses_unknown_or_database_options_and_changes_nothing(tmp_path: Path) -> None:
    from celery import Celery

    from dbos_celery import ConfigurationError, Durable
    from dbos_celery.testing import bind, sqlite_database

    own = tmp_path / "own.db"
    app = Celery("own", broker="redis://127.0.0.1:1/0", set_as_current=False)
    durable = Durable(app, f"sqlite:///{own}")
    try:
        for bad in ({"database_url": "sqlite:///x.db"}, {"schema": "x"}, {"poll_intervall": 1}):
            with pytest.raises(ConfigurationError, match="bind"):
                with bind(durable, sqlite_database(tmp_path), **bad):
                    pass
        with pytest.raises(ConfigurationError, match="poll_interval"):
            with bind(durable, sqlite_database(tmp_path), poll_interval=0):
                pass
        assert durable.services.store.url.database == str(own)
        assert app.conf.broker_url == "redis://127.0.0.1:1/0"
        with bind(durable, sqlite_database(tmp_path), poll_interval=0.1) as bound:
            assert bound is durable and bound.list_workflows() == []
            assert durable.services.settings.poll_interval == 0.1
            assert app.conf.broker_url == "memory://"
        assert durable.services.settings.poll_interval == 1.0
        assert durable.services.store.url.database == str(own)
        assert app.conf.broker_url == "redis://127.0.0.1:1/0"
        assert not own.exists()  # its own database was never opened
    finally:
        durable.close()


def test_the_fixtures_are_functions_too(tmp_path: Path) -> None:
    """docs/testing.md, "Without the fixtures"."""
    from dbos_celery.testing import bind, run_workflow, sqlite_database, start_durable_worker
    from examples.checkout.app import checkout, durable

    with bind(durable, sqlite_database(tmp_path), poll_interval=0.1):
        with start_durable_worker(durable):
            assert run_workflow(checkout, "o-1", 0.2) == "cancelled"
