"""Awaitable forms for producers on an event loop (FastAPI, Starlette,
aiohttp): ``await durable.asend(...)``, ``await wf.astart(...)``, ``await
handle.aresult(...)``, ``await handle.astatus()``, ``await
durable.aget_event(...)``, ``await durable.aretrieve(...)``.

Each runs the one synchronous path in a thread (``asyncio.to_thread``, the
loop's default executor), so the loop never blocks, not even while a call
retries through a database outage, and the guarantees are those of the
synchronous call. They are for code outside workflows: workflow code is
synchronous and uses the plain forms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from . import context
from .errors import InvalidArgumentError

T = TypeVar("T")


async def off_loop(call: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a thread, awaited; refused in a workflow."""
    if context.current() is not None:
        raise InvalidArgumentError(
            f"{call} is for producers on an event loop; inside a workflow or step use the "
            "synchronous form"
        )
    return await asyncio.to_thread(fn, *args, **kwargs)
