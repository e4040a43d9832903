"""Shared declarations (``dbos_celery.shared``): workflows and steps of a
module that has no Durable bind to the project's when there is one, as
Celery's ``shared_task`` binds to the app; before that, using one is a
clear error. In-process tests use a private ``Registry`` (the process-wide
one would bind their declarations to every later Durable of the run); the
wiring through ``Durable.__init__`` runs in a fresh interpreter."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from dbos_celery import ConfigurationError, Durable, InvalidArgumentError
from dbos_celery.shared import Registry
from tests.support import ROOT


@pytest.fixture
def durables(tmp_path: Path) -> Iterator[list[Durable]]:
    made: list[Durable] = []
    yield made
    for d in made:
        d.close()


def _durable(tmp_path: Path, made: list[Durable], name: str) -> Durable:
    d = Durable(Celery(name, broker="memory://"), f"sqlite:///{tmp_path / name}.sqlite")
    made.append(d)
    return d


def test_unbound_declaration_says_no_durable_exists_yet() -> None:
    registry = Registry()

    @registry.workflow()
    def greet(who: str) -> str:
        return f"hello {who}"

    @registry.transaction()
    def record(who: str) -> None: ...

    for use in (lambda: greet("x"), lambda: greet.start("x"), lambda: greet.name,
                lambda: record("x")):  # fmt: skip
        with pytest.raises(ConfigurationError, match="not bound to a Durable") as got:
            use()
        assert "durable_for(app)" in str(got.value)
    assert "greet" in repr(greet) and greet.__name__ == "greet"


def test_bound_declarations_run_as_the_durables_own(
    tmp_path: Path, durables: list[Durable]
) -> None:
    registry = Registry()
    calls: list[str] = []

    @registry.step(name="shared.tests.shout")
    def shout(who: str) -> str:
        calls.append(who)
        return who.upper()

    @registry.workflow(name="shared.tests.greet")
    def greet(who: str) -> str:
        return f"hello {shout(who)}"

    durable = _durable(tmp_path, durables, "one")
    registry.bind(durable)
    assert greet.name == "shared.tests.greet" and greet.bound() is durable.workflows[greet.name]
    assert greet("ada") == "hello ADA"  # runs durably in this thread
    (status,) = durable.list_workflows()
    assert [s.name for s in durable.list_steps(status.workflow_id)] == ["shared.tests.shout"]
    assert calls == ["ada"]
    handle = greet.start("bob", workflow_id="greet-bob")
    assert durable.retrieve("greet-bob").status().name == "shared.tests.greet"
    assert handle.workflow_id == "greet-bob"


def test_declaration_made_after_a_durable_binds_at_once_and_the_newest_wins(
    tmp_path: Path, durables: list[Durable]
) -> None:
    registry = Registry()
    first = _durable(tmp_path, durables, "first")
    registry.bind(first)

    @registry.workflow(name="shared.tests.late")
    def late() -> str:
        return "late"

    assert "shared.tests.late" in first.workflows
    second = _durable(tmp_path, durables, "second")
    registry.bind(second)
    registry.bind(second)  # once only
    assert late.bound() is second.workflows["shared.tests.late"]
    assert late.bound_to(first) is first.workflows["shared.tests.late"]


def test_declaration_nobody_holds_is_not_bound(tmp_path: Path, durables: list[Durable]) -> None:
    registry = Registry()

    def declare() -> None:
        @registry.workflow(name="shared.tests.dropped")
        def dropped() -> None: ...

    declare()
    gc.collect()
    durable = _durable(tmp_path, durables, "later")
    registry.bind(durable)
    assert "shared.tests.dropped" not in durable.workflows


def test_bad_declarations_are_refused_when_made() -> None:
    registry = Registry()
    with pytest.raises(InvalidArgumentError, match="parentheses"):
        registry.workflow(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="step name"):
        registry.step(name="")
    with pytest.raises(InvalidArgumentError, match="decorates a function"):
        registry.workflow()("not a function")  # type: ignore[arg-type]


def test_durable_binds_the_modules_shared_declarations(tmp_path: Path) -> None:
    # a fresh interpreter: the process-wide registry, as an app module uses it
    (tmp_path / "orders.py").write_text(
        textwrap.dedent("""
        from dbos_celery import shared

        @shared.shared_step()
        def price(n: int) -> int:
            return 10 * n

        @shared.shared_workflow(name="orders.total")
        def total(n: int) -> int:
            return price(n) + 1
    """)
    )
    script = textwrap.dedent(f"""
        from celery import Celery
        from dbos_celery import ConfigurationError, Durable
        from dbos_celery.shared import shared_workflow
        import orders
        try:
            orders.total(1)
        except ConfigurationError as exc:
            print("unbound:", "not bound to a Durable" in str(exc))
        durable = Durable(Celery("p", broker="memory://"), "sqlite:///{tmp_path / "db.sqlite"}")

        @shared_workflow(name="orders.later")
        def later() -> str:
            return "later"

        print(sorted(durable.workflows), orders.total(4), later())
        durable.close()
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["unbound: True", "['orders.later', 'orders.total'] 41 later"]
