"""The exception hierarchy: every error dbos_celery raises derives from
:class:`DurableError`, and each one says what to do about it.

Errors are rebuilt from their ``args`` when a recorded failure is replayed,
so every constructor takes exactly the positional arguments it stores.
"""

from __future__ import annotations

from celery.exceptions import TimeLimitExceeded


class DurableError(Exception):
    """A dbos_celery error."""

    def __str__(self) -> str:
        return self.message()

    def message(self) -> str:
        doc = (type(self).__doc__ or "").strip()
        detail = ", ".join(str(a) for a in self.args)
        return f"{doc} ({detail})" if detail and doc else (doc or detail)


class ConfigurationError(DurableError):
    """dbos_celery is misconfigured; the message names the setting to fix."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)

    def message(self) -> str:
        return str(self.args[0])


class InvalidArgumentError(DurableError, TypeError):
    """An argument has the wrong type or value; nothing was written."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)

    def message(self) -> str:
        return str(self.args[0])


class SerializationError(DurableError):
    """A value could not be serialized (or read back) with the configured
    serializer; nothing was written. Pass JSON-compatible values, or choose
    another kombu serializer with ``Durable(serializer=...)``."""

    def __init__(self, what: str, cause: str) -> None:
        super().__init__(what, cause)

    def message(self) -> str:
        return (
            f"cannot serialize {self.args[0]}: {self.args[1]}. Nothing was written; "
            "pass JSON-compatible values or configure Durable(serializer=...)."
        )


class MessageTooLargeError(DurableError):
    """A message or event value is larger than ``max_message_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(size, limit)

    def message(self) -> str:
        return (
            f"serialized value is {self.args[0]} bytes, over the limit of {self.args[1]} "
            "bytes (Durable(max_message_bytes=...)); nothing was written. Store large "
            "payloads elsewhere and send a reference."
        )


class NonExistentWorkflowError(DurableError):
    """No workflow has this id."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(workflow_id)

    @property
    def workflow_id(self) -> str:
        return str(self.args[0])

    def message(self) -> str:
        return f"no workflow with id {self.args[0]!r}; nothing was written"


class ConflictingWorkflowIdError(DurableError):
    """A workflow id is already used by a different workflow."""

    def __init__(self, workflow_id: str, existing: str, requested: str) -> None:
        super().__init__(workflow_id, existing, requested)

    def message(self) -> str:
        wf, existing, requested = self.args
        return (
            f"workflow id {wf!r} belongs to a {existing!r} workflow; it cannot be "
            f"started as {requested!r}. Use another id; nothing was written."
        )


class NonDeterministicWorkflowError(DurableError):
    """A replayed workflow asked for a different step than the one recorded."""

    def __init__(self, workflow_id: str, seq: int, recorded: str, requested: str) -> None:
        super().__init__(workflow_id, seq, recorded, requested)

    def message(self) -> str:
        wf, seq, recorded, requested = self.args
        return (
            f"workflow {wf!r} is not deterministic: step #{seq} was recorded as "
            f"{recorded!r} but the replay asked for {requested!r}. Workflow code must "
            "make the same durable calls in the same order on every run; move "
            "non-deterministic logic into steps."
        )


class StepError(DurableError):
    """A recorded step (or workflow) failure whose original exception type could
    not be rebuilt; carries the original type name and message."""

    def __init__(self, type_name: str, text: str) -> None:
        super().__init__(type_name, text)

    @property
    def type_name(self) -> str:
        return str(self.args[0])

    def message(self) -> str:
        return f"{self.args[0]}: {self.args[1]}"


class MaxStepAttemptsError(DurableError):
    """A step failed on every attempt it was allowed."""

    def __init__(self, step_name: str, attempts: int, last_error: str) -> None:
        super().__init__(step_name, attempts, last_error)

    def message(self) -> str:
        name, attempts, last = self.args
        return f"step {name!r} failed {attempts} time(s); last error: {last}"


class StepTimeLimitExceeded(DurableError, TimeLimitExceeded):  # type: ignore[misc]
    """Celery's hard time limit ended the process running a step. Also a
    Celery ``TimeLimitExceeded``."""

    def __init__(self, step_name: str, limit: float) -> None:
        super().__init__(step_name, limit)

    def message(self) -> str:
        name, limit = self.args
        return f"step {name!r} was killed by the task's hard time limit ({limit:g} s)"


class StepProcessDiedError(DurableError):
    """The process running a step died (killed by a signal, out of memory, a
    crash) that many times in a row; the step is not run again."""

    def __init__(self, step_name: str, deaths: int) -> None:
        super().__init__(step_name, deaths)

    def message(self) -> str:
        name, deaths = self.args
        return (
            f"the process running step {name!r} died {deaths} time(s) in a row (killed by a "
            "signal, out of memory, or a crash); not running it again"
        )


class ResultTimeoutError(DurableError, TimeoutError):
    """The workflow did not finish within the given timeout; it keeps running."""

    def __init__(self, workflow_id: str, timeout: float) -> None:
        super().__init__(workflow_id, timeout)

    def message(self) -> str:
        return (
            f"workflow {self.args[0]!r} did not finish within {self.args[1]} s; it is "
            "still running: call result() again or check status()"
        )


class NotInWorkflowError(DurableError):
    """A workflow-only call was made outside a workflow."""

    def __init__(self, call: str) -> None:
        super().__init__(call)

    def message(self) -> str:
        return (
            f"{self.args[0]} can only be called inside a @durable.workflow function "
            "(not from a plain task, a producer or a step)"
        )


class NotInTransactionError(DurableError):
    """``durable.connection`` was read outside a ``@durable.transaction()`` step."""

    def message(self) -> str:
        return (
            "durable.connection is the connection of a @durable.transaction() step: read it "
            "inside the body of one"
        )


class SendFromStepError(DurableError):
    """``send`` was called inside a step without an idempotency key."""

    def __init__(self, destination_id: str) -> None:
        super().__init__(destination_id)

    def message(self) -> str:
        return (
            f"send to {self.args[0]!r} from inside a step: a retried step would send "
            "twice. Call durable.send from the workflow body (checkpointed, exactly "
            "once), or pass idempotency_key=... to deduplicate retries."
        )


class WorkflowNotRegisteredError(DurableError):
    """A worker received a workflow it has no function for."""

    def __init__(self, name: str) -> None:
        super().__init__(name)

    def message(self) -> str:
        return (
            f"no workflow named {self.args[0]!r} is registered in this process: import "
            "the module that defines it in the Celery app the worker runs"
        )


class SchemaVersionError(DurableError):
    """The database schema is newer than this version of dbos_celery."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(found, supported)

    def message(self) -> str:
        return (
            f"database schema version {self.args[0]} is newer than this dbos_celery "
            f"supports ({self.args[1]}); upgrade dbos_celery on this machine"
        )


class DatabaseUnavailableError(DurableError):
    """The database could not be reached after retrying."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)

    def message(self) -> str:
        return f"database unavailable: {self.args[0]}"


class CheckpointConflict(DurableError):
    """A checkpoint is recorded already at this sequence number: another
    runner wrote it, or an earlier commit of this one whose reply was lost.
    Raised by the store; a runner turns it into LeaseLostError."""


class WorkflowFailedError(DurableError):
    """The workflow ended without a result (cancelled, or recovered too often)."""

    def __init__(self, workflow_id: str, status: str) -> None:
        super().__init__(workflow_id, status)

    def message(self) -> str:
        text = f"workflow {self.args[0]!r} ended with status {self.args[1]}"
        if self.args[1] == "MAX_RECOVERY_ATTEMPTS_EXCEEDED":
            text += (
                ": it was recovered max_recovery_attempts times (each time the worker process "
                "running it was lost: killed, its machine gone, or frozen past worker_timeout); "
                "durable.resume() runs it again"
            )
        return text


class LeaseLostError(BaseException):
    """This process no longer owns the workflow it was running (another worker
    took it over, or it was resumed elsewhere). Derives from BaseException so
    that user code's ``except Exception`` cannot swallow it."""


class WorkflowCancelledError(BaseException):
    """The workflow was cancelled (``durable.cancel``, or its timeout passed);
    it stops at this durable boundary with status CANCELLED. Derives from
    BaseException so that user code's ``except Exception`` cannot swallow it;
    ``durable.resume`` runs it again from its checkpoints."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(workflow_id)

    @property
    def workflow_id(self) -> str:
        return str(self.args[0])

    def __str__(self) -> str:
        return f"workflow {self.args[0]!r} was cancelled; it stopped at a durable boundary"


class WorkflowNotResumableError(DurableError):
    """Only a CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED workflow can be resumed."""

    def __init__(self, workflow_id: str, status: str) -> None:
        super().__init__(workflow_id, status)

    def message(self) -> str:
        return (
            f"workflow {self.args[0]!r} has status {self.args[1]}: only CANCELLED or "
            "MAX_RECOVERY_ATTEMPTS_EXCEEDED workflows can be resumed. Fork it "
            "(durable.fork) to run a finished workflow again."
        )


class CallWouldDeadlockError(DurableError):
    """A durable.call would wait forever: its task is routed to a queue that
    the worker running the workflow consumes, that worker has one slot, and
    parking is off (``park_after=None``), so the wait never frees it."""

    def __init__(self, task_name: str, queue: str) -> None:
        super().__init__(task_name, queue)

    def message(self) -> str:
        task, queue = self.args
        return (
            f"durable.call of task {task!r} would never finish: it is routed to queue "
            f"{queue!r}, which this worker consumes with its only slot, and that slot is "
            "held by the workflow waiting for the task. Route the task to a queue served "
            "by other workers (task_routes, or task.s(...).set(queue=...)), run the "
            "workflow on a worker with more concurrency, or let long waits park "
            "(park_after); nothing was dispatched."
        )
