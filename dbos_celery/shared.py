"""Workflows and steps declared without a Durable: Celery's ``shared_task``
for dbos_celery.

A reusable module (a Django app's ``workflows.py``, a library) cannot import
the project's ``Durable``: the project imports it. It declares its workflows
and steps with ``@shared_workflow()``, ``@shared_step()`` and
``@shared_transaction()`` instead (same arguments as ``@durable.workflow()``,
``@durable.step()`` and ``@durable.transaction()``). A declaration is
registered with every Durable of the process: each Durable registers the
declarations that exist when it is made (``Durable.__init__`` calls
:func:`bind`), and a declaration made later (its module imported by the
worker's autodiscovery, say) is registered with the existing Durables at
once, as Celery binds a shared task to every app.

The object a decorator returns delegates (``start``, ``start_with``,
``astart``, calling it, ``name``...) to what the most recently made Durable
registered. Used before any Durable exists, it raises ``ConfigurationError``
saying so. Declarations are held weakly: one that nothing references any
more is registered with no later Durable.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar

from .errors import ConfigurationError, InvalidArgumentError
from .validation import check_id

if TYPE_CHECKING:
    from .step import Step
    from .workflow import Workflow, WorkflowHandle

P = ParamSpec("P")
R = TypeVar("R")


class Decorators(Protocol):
    """What a declaration is registered with: a ``Durable``."""

    def workflow(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]: ...

    def step(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]: ...

    def transaction(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]: ...


class _Declaration:
    """A function, how to register it (``kind``: the name of the Durable's
    decorator, with its arguments), and what each Durable registered."""

    def __init__(self, kind: str, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:  # fmt: skip
        if not callable(fn):
            raise InvalidArgumentError(f"@shared_{kind}() decorates a function, not {fn!r}")
        self._kind = kind
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        # (Durable, the object it registered), oldest first
        self._bound: list[tuple[weakref.ref[Decorators], Any]] = []
        self.__name__ = getattr(fn, "__name__", repr(fn))
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__module__ = fn.__module__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<shared {self._kind} {self._fn.__module__}.{self._fn.__qualname__}>"

    def _bind(self, durable: Decorators) -> None:
        if any(ref() is durable for ref, _ in self._bound):
            return
        registered = getattr(durable, self._kind)(*self._args, **self._kwargs)(self._fn)
        self._bound.append((weakref.ref(durable), registered))

    def _target(self) -> Any:
        """What the most recently made Durable still alive registered."""
        for ref, registered in reversed(self._bound):
            if ref() is not None:
                return registered
        raise ConfigurationError(
            f"{self!r} is not bound to a Durable: no Durable has been made in this process "
            "yet. Make the project's Durable before using it (Django: durable = "
            "dbos_celery.contrib.django.durable_for(app) in proj/celery.py, which "
            "proj/__init__.py imports; elsewhere: Durable(app, ...) in the module that "
            "`celery -A` loads)"
        )

    def bound_to(self, durable: Decorators) -> Any:
        """What ``durable`` registered for this declaration (it must exist)."""
        for ref, registered in self._bound:
            if ref() is durable:
                return registered
        raise ConfigurationError(f"{self!r} is not bound to {durable!r}")


class SharedWorkflow(_Declaration, Generic[P, R]):
    """A workflow declared with ``@shared_workflow()``: a ``Workflow`` of the
    project's Durable once one exists."""

    def bound(self) -> Workflow[P, R]:
        """The ``Workflow`` registered by the most recently made Durable."""
        return self._target()  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        """The workflow's name (its Celery task name).

        Raises:
            ConfigurationError: no Durable has been made yet.
        """
        return self.bound().name

    @property
    def task(self) -> Any:
        """Its Celery task."""
        return self.bound().task

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.bound()(*args, **kwargs)

    def start(self, *args: Any, **kwargs: Any) -> WorkflowHandle[R]:
        """``Workflow.start`` (``workflow_id=``, ``timeout=``, ``connection=``)."""
        return self.bound().start(*args, **kwargs)

    def start_with(self, *args: Any, **kwargs: Any) -> WorkflowHandle[R]:
        """``Workflow.start_with`` (``args``, ``kwargs``, ``workflow_id=``...)."""
        return self.bound().start_with(*args, **kwargs)

    async def astart(self, *args: Any, **kwargs: Any) -> WorkflowHandle[R]:
        """``Workflow.astart``."""
        return await self.bound().astart(*args, **kwargs)


class SharedStep(_Declaration, Generic[P, R]):
    """A step (or transaction step) declared with ``@shared_step()`` or
    ``@shared_transaction()``: the project's Durable's step once one exists."""

    def bound(self) -> Step[P, R]:
        """The step registered by the most recently made Durable."""
        return self._target()  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        """The step's name, as its checkpoints record it.

        Raises:
            ConfigurationError: no Durable has been made yet.
        """
        return self.bound().name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.bound()(*args, **kwargs)


D = TypeVar("D", bound=_Declaration)


class Registry:
    """The declarations and the Durables of a process (one, ``REGISTRY``,
    behind the module's functions; tests may make their own)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._declarations: weakref.WeakSet[_Declaration] = weakref.WeakSet()
        self._durables: list[weakref.ref[Decorators]] = []

    def declare(self, declaration: D) -> D:
        """Keep ``declaration`` and register it with the existing Durables."""
        with self._lock:
            self._declarations.add(declaration)
            for ref in list(self._durables):
                durable = ref()
                if durable is not None:
                    declaration._bind(durable)
        return declaration

    def bind(self, durable: Decorators) -> None:
        """Register every declaration with ``durable``, and the later ones as
        they are made."""
        with self._lock:
            self._durables = [r for r in self._durables if r() is not None]
            if not any(r() is durable for r in self._durables):
                self._durables.append(weakref.ref(durable))
            for declaration in list(self._declarations):
                declaration._bind(durable)

    def workflow(
        self, name: str | None = None, *, timeout: float | None = None, **task_options: Any
    ) -> Callable[[Callable[P, R]], SharedWorkflow[P, R]]:
        _check_name(name, "workflow")
        options: dict[str, Any] = {"timeout": timeout, **task_options}

        def decorate(fn: Callable[P, R]) -> SharedWorkflow[P, R]:
            return self.declare(SharedWorkflow("workflow", fn, (name,), options))

        return decorate

    def step(self, **options: Any) -> Callable[[Callable[P, R]], SharedStep[P, R]]:
        _check_name(options.get("name"), "step")

        def decorate(fn: Callable[P, R]) -> SharedStep[P, R]:
            return self.declare(SharedStep("step", fn, (), options))

        return decorate

    def transaction(self, **options: Any) -> Callable[[Callable[P, R]], SharedStep[P, R]]:
        _check_name(options.get("name"), "transaction")

        def decorate(fn: Callable[P, R]) -> SharedStep[P, R]:
            return self.declare(SharedStep("transaction", fn, (), options))

        return decorate


def _check_name(name: Any, kind: str) -> None:
    if callable(name):
        raise InvalidArgumentError(f"use @shared_{kind}() with parentheses")
    if name is not None:
        check_id(name, f"{kind} name")


REGISTRY = Registry()


def shared_workflow(
    name: str | None = None, *, timeout: float | None = None, **task_options: Any
) -> Callable[[Callable[P, R]], SharedWorkflow[P, R]]:
    """``@durable.workflow()`` for a module that has no Durable: registered
    with the project's Durable when there is one (same arguments)."""
    return REGISTRY.workflow(name, timeout=timeout, **task_options)


def shared_step(
    *,
    name: str | None = None,
    max_attempts: int = 1,
    interval: float = 1.0,
    backoff: float = 2.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    defer_checkpoint: bool = False,
) -> Callable[[Callable[P, R]], SharedStep[P, R]]:
    """``@durable.step()`` for a module that has no Durable (same arguments)."""
    return REGISTRY.step(name=name, max_attempts=max_attempts, interval=interval,
                         backoff=backoff, retry_on=retry_on,
                         defer_checkpoint=defer_checkpoint)  # fmt: skip


def shared_transaction(
    *,
    name: str | None = None,
    max_attempts: int = 1,
    interval: float = 1.0,
    backoff: float = 2.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> Callable[[Callable[P, R]], SharedStep[P, R]]:
    """``@durable.transaction()`` for a module that has no Durable (same
    arguments): the body's writes and its checkpoint commit together, in a
    transaction of the Durable's ``transactions`` source (Django's
    ``transaction.atomic`` with ``dbos_celery.contrib.django``)."""
    return REGISTRY.transaction(name=name, max_attempts=max_attempts, interval=interval,
                                backoff=backoff, retry_on=retry_on)  # fmt: skip


def bind(durable: Decorators) -> None:
    """Register every shared declaration with ``durable`` (called by
    ``Durable.__init__``), and the later ones as they are made."""
    REGISTRY.bind(durable)
