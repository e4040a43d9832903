"""Running a step: retries, checkpoints, replay.

Inside a workflow a step takes the next sequence number. On replay the
recorded output is returned (or the recorded exception raised) without
running the step. Otherwise it runs, with retries, and its outcome is
committed before the call returns (with ``defer_checkpoint``: with the
workflow's next durable write, ``checkpoint.py``). A step interrupted before
its checkpoint commits may run again: steps are at-least-once until they
commit. When the processes that ran it died in it (a hard time limit, a
crash), those deaths count against it, so that a step that kills its
process fails instead of looping (``store/kills.py``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from . import cancellation, context, tracing
from .checkpoint import flush, hold, record, replayed
from .errors import (
    InvalidArgumentError,
    MaxStepAttemptsError,
    SerializationError,
    StepProcessDiedError,
    StepTimeLimitExceeded,
)
from .loops import backoff
from .store import kills

if TYPE_CHECKING:
    from .services import Services

# how many times in a row the process running a step may die (not by a
# time limit) before the step fails with StepProcessDiedError
MAX_STEP_DEATHS = 3

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("dbos_celery")


class Step(Generic[P, R]):
    """A function whose outcome is checkpointed when called in a workflow."""

    def __init__(
        self,
        sv: Services,
        fn: Callable[P, R],
        name: str,
        max_attempts: int,
        interval: float,
        backoff: float,
        retry_on: tuple[type[BaseException], ...],
        defer_checkpoint: bool = False,
    ) -> None:
        if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
            raise InvalidArgumentError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        if interval < 0 or backoff < 1:
            raise InvalidArgumentError("interval must be >= 0 and backoff >= 1")
        self.sv = sv
        self.fn = fn
        self.name = name
        self.max_attempts = max_attempts
        self.interval = interval
        self.backoff = backoff
        self.retry_on = retry_on
        self.defer_checkpoint = defer_checkpoint
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = context.current()
        if ctx is None or ctx.in_step:
            return self._plain(args, kwargs)  # outside a workflow: a plain call
        sv = self.sv
        seq = ctx.next_seq()
        row = ctx.replay(seq, self.name)
        if row is not None:
            return replayed(sv.codec, row)  # type: ignore[no-any-return]
        cancellation.check(sv, ctx)  # in memory unless a cancel was hinted
        attributes = {tracing.WORKFLOW_ID: ctx.workflow_id, "dbos_celery.seq": seq}
        with tracing.span(f"dbos_celery.step {self.name}", attributes):
            return self._run(ctx, seq, args, kwargs)

    def _run(self, ctx: context.WorkflowContext, seq: int, args: Any, kwargs: Any) -> R:
        """Run the attempts and checkpoint the outcome."""
        sv = self.sv
        flush(sv, ctx)  # the previous step's checkpoint, before this body runs
        killed, ctx.killed = ctx.killed, None
        ctx.in_step = True
        try:
            first = 1 if killed is None else self._after_deaths(ctx.workflow_id, *killed)
            output = self._attempts(ctx, seq, args, kwargs, first)
        except Exception as exc:
            ctx.in_step = False
            self._record(ctx, seq, None, sv.codec.dumps_error(exc), killed)
            raise
        finally:
            ctx.in_step = False
        self._done(ctx, seq, output, killed)
        return output

    def _plain(self, args: Any, kwargs: Any) -> R:
        """The step called outside a workflow (or inside another step)."""
        return self.fn(*args, **kwargs)

    def _once(self, ctx: context.WorkflowContext, seq: int, args: Any, kwargs: Any) -> R:
        """One attempt of the body."""
        return self.fn(*args, **kwargs)

    def _done(
        self, ctx: context.WorkflowContext, seq: int, output: R, killed: tuple[str, int] | None
    ) -> None:
        """Checkpoint the output of the attempt that succeeded."""
        try:
            data = self.sv.codec.dumps(output, f"output of step {self.name!r}")
        except SerializationError as exc:
            self._record(ctx, seq, None, self.sv.codec.dumps_error(exc), killed)
            raise
        self._record(ctx, seq, data, None, killed)

    def _record(
        self, ctx: context.WorkflowContext, seq: int, output: bytes | None, error: bytes | None,
        killed: tuple[str, int] | None,
    ) -> None:  # fmt: skip
        if killed is None and self.defer_checkpoint:
            hold(ctx, seq, self.name, output, error)  # written with the next write
            return
        record(self.sv, ctx, seq, self.name, output, error)
        self._forget_deaths(ctx, killed)

    def _forget_deaths(self, ctx: context.WorkflowContext, killed: tuple[str, int] | None) -> None:
        if killed is not None:  # the deaths were this step's: forget them
            self.sv.store.now(kills.clear, ctx.workflow_id, ctx.executor_id)

    def _after_deaths(self, workflow_id: str, why: str, deaths: int) -> int:
        """The processes that ran this workflow last died in this step
        ``deaths`` times in a row: raise the step's error when no attempt is
        left, else the number of the attempt to run now. A hard time limit
        counts as a failed attempt (the retry policy applies); other deaths
        (a signal, out of memory, a crash) end the step after
        ``MAX_STEP_DEATHS``."""
        if why.startswith(kills.TIME_LIMIT):
            error: Exception = StepTimeLimitExceeded(self.name, float(why[len(kills.TIME_LIMIT) :]))
            if self.max_attempts == 1 or not isinstance(error, self.retry_on):
                raise error
            if deaths >= self.max_attempts:
                raise MaxStepAttemptsError(self.name, deaths, repr(error)) from error
            attempt = deaths + 1
        elif deaths >= MAX_STEP_DEATHS:
            raise StepProcessDiedError(self.name, deaths)
        else:
            error, attempt = StepProcessDiedError(self.name, deaths), 1
        log.warning("step %s: %s; running it again", self.name, error,
                    extra={"workflow_id": workflow_id})  # fmt: skip
        return attempt

    def _attempts(
        self, ctx: context.WorkflowContext, seq: int, args: Any, kwargs: Any, first: int = 1
    ) -> R:
        workflow_id = ctx.workflow_id
        delays = backoff(self.interval, cap=float("inf"), factor=self.backoff)
        for attempt in range(first, self.max_attempts + 1):
            try:
                return self._once(ctx, seq, args, kwargs)
            except self.retry_on as exc:
                if self.max_attempts == 1:
                    raise
                if attempt == self.max_attempts:
                    raise MaxStepAttemptsError(self.name, attempt, repr(exc)) from exc
                delay = next(delays)
                log.info(
                    "step %s failed (attempt %d of %d: %r); retrying in %.2f s",
                    self.name, attempt, self.max_attempts, exc, delay,
                    extra={"workflow_id": workflow_id},
                )  # fmt: skip
                time.sleep(delay)
        raise AssertionError("unreachable")
