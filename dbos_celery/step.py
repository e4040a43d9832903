"""Running a step: retries, checkpoints, replay.

Inside a workflow a step takes the next sequence number. On replay the
recorded output is returned (or the recorded exception raised) without
running the step. Otherwise it runs, with retries, and its outcome is
committed before the call returns. A step interrupted before its checkpoint
commits may run again: steps are at-least-once until they commit.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from . import cancellation, context
from .checkpoint import record, replayed
from .errors import InvalidArgumentError, MaxStepAttemptsError, SerializationError
from .loops import backoff

if TYPE_CHECKING:
    from .services import Services

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
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = context.current()
        if ctx is None or ctx.in_step:
            return self.fn(*args, **kwargs)  # outside a workflow: a plain call
        sv = self.sv
        seq = ctx.next_seq()
        row = ctx.replay(seq, self.name)
        if row is not None:
            return replayed(sv.codec, row)  # type: ignore[no-any-return]
        cancellation.check(sv, ctx)  # in memory unless a cancel was hinted
        ctx.in_step = True
        try:
            output = self._attempts(ctx.workflow_id, args, kwargs)
        except Exception as exc:
            ctx.in_step = False
            record(sv, ctx, seq, self.name, None, sv.codec.dumps_error(exc))
            raise
        finally:
            ctx.in_step = False
        try:
            data = sv.codec.dumps(output, f"output of step {self.name!r}")
        except SerializationError as exc:
            record(sv, ctx, seq, self.name, None, sv.codec.dumps_error(exc))
            raise
        record(sv, ctx, seq, self.name, data)
        return output

    def _attempts(self, workflow_id: str, args: Any, kwargs: Any) -> R:
        delays = backoff(self.interval, cap=float("inf"), factor=self.backoff)
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self.fn(*args, **kwargs)
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
