"""Durable: the façade and composition root.

It checks the options once (``config``), builds the services the modules
run on (store, notifier, codec, settings, publish), registers workflows as
Celery tasks and wires Celery's signals (``celery_hooks``). Nothing connects
at construction: engines, Redis clients and threads are made per process on
first use (or in Celery's ``worker_process_init`` after the prefork pool
forks a child), never at import or in the parent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from celery import Celery
from celery.utils.imports import gen_task_name

from . import config, context, messaging, repoint, runner, shared
from .aio import off_loop
from .calls.dispatch import Dispatcher, TaskCall
from .calls.outcome import Outcomes
from .celery_hooks import CeleryHooks, time_limit
from .errors import ConfigurationError, InvalidArgumentError
from .keys import channel_prefix
from .operations import Operations
from .serialization import Serializer
from .services import Services
from .step import Step
from .store.engine import Database
from .store.pooltx import PoolTransactions
from .store.workers import Recovered
from .txstep import TransactionStep, current_connection
from .validation import check_flag, check_id, check_step_options, check_timeout, decorated_name
from .wakeup import LocalNotifier, Notifier, RedisNotifier
from .workflow import Workflow

if TYPE_CHECKING:
    from .store.engine import Engine
    from .txsource import TransactionSource

P = ParamSpec("P")
R = TypeVar("R")


class Durable(Operations):
    """Durable workflows for one Celery app.

    ``database_url`` (or a caller's ``engine``) is the source of truth
    (a function returning the URL is called when the Durable first connects):
    Postgres in production; with none given, ``DBOS_CELERY_DATABASE_URL``
    or else a SQLite file in the working directory (one machine only).
    ``redis_url`` carries wakeup hints (None: in-process wakeups plus polling
    every ``poll_interval`` seconds). ``transactions``: where the
    transactions of ``@durable.transaction()`` steps come from (default: the
    Durable's own pool; ``dbos_celery.contrib.django`` passes Django's).
    The other options are on the documentation's Configuration page.

    Nothing connects at construction: the database, Redis and the library's
    threads are opened per process on first use (in a worker, after the pool
    forks). Its decorators register workflows as Celery tasks of ``app``,
    and a bootstep and Celery signals hook it into the app's workers.

    Raises:
        ConfigurationError: ``app`` is not a Celery app, or an option is
            invalid (named in the message); nothing is written.
    """

    def __init__(
        self,
        app: Celery,
        database_url: str | Callable[[], str] | None = None,
        *,
        redis_url: str | None = None,
        engine: Engine | None = None,
        schema: str = "dbos_celery",
        serializer: str = "json",
        poll_interval: float = 1.0,
        heartbeat_interval: float = 0.5,
        worker_timeout: float = 2.0,
        sweep_interval: float = 0.5,
        enqueued_timeout: float = 30.0,
        max_recovery_attempts: int = 50,
        max_message_bytes: int = 1 << 20,
        database_retry_timeout: float = 10.0,
        call_redispatch_after: float = 60.0,
        park_after: float | None = 5.0,
        retention: float | timedelta | None = None,
        transactions: TransactionSource | None = None,
    ) -> None:
        if not isinstance(app, Celery):
            raise ConfigurationError("Durable(app, ...) needs a celery.Celery app")
        url = config.database_url(database_url, engine)
        redis = config.redis_url(redis_url)
        settings = config.Settings(
            schema=schema, poll_interval=poll_interval, heartbeat_interval=heartbeat_interval,
            worker_timeout=worker_timeout, sweep_interval=sweep_interval,
            enqueued_timeout=enqueued_timeout, max_recovery_attempts=max_recovery_attempts,
            max_message_bytes=max_message_bytes, database_retry_timeout=database_retry_timeout,
            call_redispatch_after=call_redispatch_after, park_after=park_after,
            retention=config.retention(retention),
        )  # fmt: skip
        self.app = app
        store = Database(url, engine=engine, schema=schema, retry_timeout=database_retry_timeout)
        self._transactions = transactions or PoolTransactions(lambda: self.services.store)
        codec = Serializer(serializer)
        notifier: Notifier = (
            RedisNotifier(redis, channel_prefix(schema)) if redis else LocalNotifier()
        )
        self.workflows: dict[str, Workflow[Any, Any]] = {}
        self.services = Services(
            store, notifier, codec, settings, self._publish, lambda: sorted(self.workflows)
        )
        self._calls = Dispatcher(self.services, app)
        self._hooks = CeleryHooks(
            app, self.services, self.workflows.__contains__, self._calls,
            Outcomes(self.services, app),
        )  # fmt: skip
        self._hooks.install()
        shared.bind(self)

    # --- decorators ---------------------------------------------------------

    def workflow(
        self, name: str | None = None, *, timeout: float | None = None, **task_options: Any
    ) -> Callable[[Callable[P, R]], Workflow[P, R]]:
        """Make a function a durable workflow and register its Celery task
        (named as Celery names tasks, so task_routes and queues apply).
        ``timeout``: the default of ``start(..., timeout=)`` in seconds;
        ``task_options`` are Celery's (``queue``, ``time_limit``, ...).

        Raises:
            InvalidArgumentError: used without parentheses, a bad name or
                timeout, or on something that is not a function.
            ConfigurationError: a workflow of that name is already
                registered on this Durable.
        """

        if callable(name):
            raise InvalidArgumentError("use @durable.workflow() with parentheses")
        if name is not None:
            check_id(name, "workflow name")
        check_timeout(timeout, allow_none=True)

        def decorate(fn: Callable[P, R]) -> Workflow[P, R]:
            if not callable(fn):
                raise InvalidArgumentError(f"@durable.workflow() decorates a function, not {fn!r}")
            task_name = name or gen_task_name(self.app, fn.__name__, fn.__module__)
            if task_name in self.workflows:
                raise ConfigurationError(f"a workflow named {task_name!r} is already registered")

            def run(workflow_id: str) -> None:
                self._execute(workflow_id, time_limit(task))

            run.__name__ = fn.__name__
            run.__qualname__ = fn.__qualname__
            run.__module__ = fn.__module__
            run.__doc__ = fn.__doc__
            options = {"ignore_result": True, **task_options}
            task = self.app.task(name=task_name, shared=False, **options)(run)
            wf = Workflow(self.services, fn, task_name, task, self._execute, timeout)
            self.workflows[task_name] = wf
            return wf

        return decorate

    def autodiscover(
        self,
        packages: list[str] | None = None,
        related_name: str = "workflows",
        force: bool = False,
    ) -> None:
        """Register the workflows of ``<package>.<related_name>`` for each of
        ``packages`` (default: Django's ``INSTALLED_APPS``, as Celery's own
        ``autodiscover_tasks`` does), imported when the worker starts (it
        imports the app's modules), or now with ``force``. Celery imports
        only ``tasks`` modules by itself: call this next to
        ``app.autodiscover_tasks()`` so that workers know the workflows
        defined in ``workflows.py`` modules."""
        self.app.autodiscover_tasks(packages, related_name=related_name, force=force)

    def step(
        self,
        *,
        name: str | None = None,
        max_attempts: int = 1,
        interval: float = 1.0,
        backoff: float = 2.0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        defer_checkpoint: bool = False,
    ) -> Callable[[Callable[P, R]], Step[P, R]]:
        """A checkpointed step; retried ``max_attempts`` times, sleeping
        ``interval * backoff**n`` between attempts, on the exceptions of
        ``retry_on``.

        In a workflow, a step whose checkpoint committed never runs again (a
        replay returns its recorded output or raises its recorded error); a
        step interrupted before its checkpoint runs again (at-least-once).
        When every attempt fails, ``MaxStepAttemptsError`` is recorded and
        raised. Outside a workflow the function is called as is.

        ``defer_checkpoint=True`` saves a commit: the checkpoint is written
        with the workflow's next durable write (a send, a child's start, a
        call, the final status...), or alone before the next step runs or
        the workflow waits. The price: a worker killed or frozen while the
        workflow's own code runs after the step runs the step again. For
        steps that are cheap and safe to repeat, in short workflows.

        Raises:
            InvalidArgumentError: a bad name, ``interval``, ``backoff``,
                ``retry_on`` or ``defer_checkpoint``, or on something that
                is not a function.
        """
        check_step_options(name, interval, backoff, retry_on)
        check_flag(defer_checkpoint, "defer_checkpoint")

        def decorate(f: Callable[P, R]) -> Step[P, R]:
            step_name = decorated_name("step", f, name)
            return Step(self.services, f, step_name, max_attempts, interval, backoff, retry_on,
                        defer_checkpoint)  # fmt: skip

        return decorate

    def transaction(
        self,
        *,
        name: str | None = None,
        max_attempts: int = 1,
        interval: float = 1.0,
        backoff: float = 2.0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
    ) -> Callable[[Callable[P, R]], TransactionStep[P, R]]:
        """A step whose database writes and checkpoint commit in one
        transaction on the Durable's database: its effect on the database
        happens exactly once. The body reaches the transaction as
        ``durable.connection`` (a SQLAlchemy Connection, or what the
        Durable's ``transactions`` source gives: Django's connection).
        Killed before the commit, nothing happened and the replay runs the
        body again; after it, the replay returns the recorded output. Retries
        as ``step`` does, each attempt in a new transaction.

        Raises:
            InvalidArgumentError: as for ``step``.
        """
        check_step_options(name, interval, backoff, retry_on)

        def decorate(f: Callable[P, R]) -> TransactionStep[P, R]:
            step_name = decorated_name("transaction", f, name)
            return TransactionStep(self.services, self._transactions, f, step_name,
                                   max_attempts, interval, backoff, retry_on)  # fmt: skip

        return decorate

    # --- inside a workflow --------------------------------------------------

    @property
    def connection(self) -> Any:
        """The connection of the ``@durable.transaction()`` step running here.

        Raises:
            NotInTransactionError: outside such a step.
        """
        return current_connection()

    @property
    def workflow_id(self) -> str:
        """The id of the workflow running in this context.

        Raises:
            NotInWorkflowError: outside a workflow.
        """
        return context.require_workflow("durable.workflow_id").workflow_id

    def recv(self, topic: str | None = None, timeout: float = 60.0) -> Any:
        """The oldest message for this workflow on ``topic``, or None after
        ``timeout`` seconds (a durable deadline: after a crash the wait
        resumes with the time left). Each message is consumed by exactly one
        ``recv``, in the transaction of the recv's checkpoint, and a replay
        returns the same message. A wait longer than ``park_after`` parks.

        Raises:
            NotInWorkflowError: outside a workflow, or inside a step.
            InvalidArgumentError: a bad topic or timeout.
            WorkflowCancelledError: the workflow was cancelled or passed its
                deadline while waiting (a ``BaseException``).
        """
        return messaging.recv(self.services, topic, timeout)

    def sleep(self, seconds: float) -> None:
        """Sleep durably: the wake time is checkpointed, so a recovered
        workflow sleeps only for what was left; a long sleep parks.

        Raises:
            NotInWorkflowError: outside a workflow, or inside a step.
            InvalidArgumentError: ``seconds`` is not a number >= 0.
            WorkflowCancelledError: cancelled while sleeping.
        """
        messaging.sleep(self.services, seconds)

    def set_event(self, key: str, value: Any) -> None:
        """Publish a key/value event of this workflow (last write wins). A
        checkpoint: a replay does not write it again. Wakes ``get_event``
        waiters at once.

        Raises:
            NotInWorkflowError: outside a workflow, or inside a step.
            InvalidArgumentError: a bad key.
            MessageTooLargeError: the value is over ``max_message_bytes``.
            SerializationError: the value cannot be serialized.
        """
        messaging.set_event(self.services, key, value)

    def call(self, task: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Run an existing Celery task (a task, a signature keeping its
        options, or a task name) on the cluster as a durable step: sent once
        per checkpoint with task id ``dbos-{workflow_id}-{seq}``, its result
        returned (or its exception raised) from the checkpoint the worker
        that ran it wrote. At-least-once: sent again, same id, only if the
        worker running it died or no worker started it in time.

        Raises:
            NotInWorkflowError: outside a workflow, or inside a step.
            InvalidArgumentError: a chain, group or chord, or not a task.
            CallWouldDeadlockError: with ``park_after=None``, a single-slot
                worker would wait for a task only it could run.
            Exception: the task's own error, re-raised.
        """
        return self._calls.call(task, args, kwargs)

    def gather(self, *tasks: Any) -> list[Any]:
        """Send several calls (``durable.task(...)`` or signatures) at once;
        their results in order, or, once all have settled, the first
        failure in order. Each is its own checkpoint: after a crash only the
        calls without an outcome are waited for (or sent again).

        Raises:
            NotInWorkflowError: outside a workflow, or inside a step.
            InvalidArgumentError: a chain, group or chord among the calls.
            Exception: the first failure in call order, once all settled.
        """
        return self._calls.gather(tasks)

    def task(self, task: Any, /, *args: Any, **kwargs: Any) -> TaskCall:
        """A task with its arguments, for ``durable.gather``."""
        return self._calls.task_call(task, args, kwargs)

    # --- from anywhere ------------------------------------------------------

    def send(
        self,
        destination_id: str,
        message: Any,
        topic: str | None = None,
        *,
        idempotency_key: str | None = None,
        connection: Any = None,
    ) -> None:
        """Store ``message`` for workflow ``destination_id``. From a workflow:
        exactly once across replays. From outside: exactly once per call, and
        once per idempotency key however often the call is retried.
        ``connection`` (as for ``Workflow.start``): store it in that
        connection's open transaction; delivered once that commits, never if
        it rolls back.

        Raises:
            NonExistentWorkflowError: no workflow ``destination_id``
                (nothing is written).
            InvalidArgumentError: a bad id, topic, key or ``connection``.
            MessageTooLargeError: over ``max_message_bytes`` serialized.
            SerializationError: the message cannot be serialized.
            SendFromStepError: inside a step without an idempotency key.
            DatabaseUnavailableError: the database did not answer within
                ``database_retry_timeout`` (nothing was stored).
        """
        messaging.send(self.services, destination_id, message, topic, idempotency_key,
                       connection)  # fmt: skip

    async def asend(
        self,
        destination_id: str,
        message: Any,
        topic: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> None:
        """``send`` for an event loop: awaitable, never blocks the loop (a send
        that retries through a database outage waits in a thread)."""
        await off_loop("asend", self.send, destination_id, message, topic,
                       idempotency_key=idempotency_key)  # fmt: skip

    async def aget_event(self, workflow_id: str, key: str, timeout: float = 60.0) -> Any:
        """``get_event`` for an event loop: awaitable, never blocks the loop."""
        return await off_loop("aget_event", self.get_event, workflow_id, key, timeout)

    def get_event(self, workflow_id: str, key: str, timeout: float = 60.0) -> Any:
        """The value of a workflow's event, waiting up to ``timeout`` for it;
        None if it was not set by then. Inside a workflow the value (and the
        wait's deadline) is checkpointed, and a long wait parks.

        Raises:
            InvalidArgumentError: a bad id, key or timeout.
            DatabaseUnavailableError: the database did not answer within
                ``database_retry_timeout``.
        """
        return messaging.get_event(self.services, workflow_id, key, timeout)

    # --- plumbing -----------------------------------------------------------

    def _publish(self, workflow_id: str, name: str, queue: str | None = None) -> None:
        """Publish the Celery message that runs a workflow: only its id, to
        ``queue`` (the one recorded when it started) or as the app routes it."""
        options: dict[str, Any] = {"queue": queue} if queue else {}
        wf = self.workflows.get(name)
        if wf is not None:
            wf.task.apply_async((workflow_id,), task_id=workflow_id, **options)
        else:
            self.app.send_task(name, (workflow_id,), task_id=workflow_id, **options)

    def _execute(self, workflow_id: str, limit: float | None = None) -> None:
        runner.execute(self.services, workflow_id, self.workflows, limit)

    def sweep(self) -> list[Recovered]:
        """Run one recovery sweep now; returns what it re-published, and the
        workflows it cancelled because their deadline passed."""
        return self._hooks.sweeper_now().sweep_once()

    def close(self) -> None:
        """Stop this process's threads and close what this object created
        (made again on next use), the beater of a worker that ran in this
        process included."""
        self._hooks.stop()
        self.services.close()
        self.services.reset_worker()

    @contextmanager
    def using(
        self,
        database_url: str | None = None,
        *,
        engine: Engine | None = None,
        schema: str | None = None,
        redis_url: str | None = None,
        **settings: Any,
    ) -> Iterator[Durable]:
        """Run this Durable (every workflow and step of it, wherever they
        were imported) on another database, schema, wakeups or options for
        the block, and as before afterwards; yields the Durable itself. For
        tests: ``dbos_celery.testing`` points each test at its own database
        this way.

        The arguments are those of ``Durable(...)``, checked as it checks
        them before anything changes (ConfigurationError). Left out, the
        database (``database_url`` or ``engine``), the ``schema`` and each
        option keep their current values; the wakeups do not: ``redis_url``
        names the block's Redis, None (the default) means in-process wakeups
        and polling. A ``transactions`` source given to ``Durable(...)``
        stays (the default one follows the block's database).

        On entry and on exit it closes what the Durable opened in this
        process (as ``close()``: threads, connections, the beater of a
        worker that ran here), and the worker state starts afresh: a worker
        started in the block runs on the block's database and options.
        Blocks nest. It changes the object for the whole process: not while
        a worker of it runs in this process, nor from two threads at once."""
        sv = self.services
        binding = repoint.configure(sv.store, sv.settings, database_url, engine, schema,
                                    redis_url, settings)  # fmt: skip
        saved = (sv.store, sv.settings, sv.notifier)
        self.close()
        sv.rebind(*binding)
        try:
            yield self
        finally:
            self.close()
            sv.rebind(*saved)
