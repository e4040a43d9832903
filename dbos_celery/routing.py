"""Which queue a Celery task goes to, as Celery itself would route it.

A workflow records the queue it runs on when it starts, so that every later
publish of it (a wake, a recovery, a resume, a fork), made by whichever
process, goes there even when that process lacks the app's ``task_routes``.
``durable.call`` uses the same routing to refuse a call that would wait on
its own single slot.
"""

from __future__ import annotations

from typing import Any


def queue_of(
    app: Any,
    name: str,
    options: dict[str, Any] | None = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
) -> str | None:
    """The name of the queue Celery routes task ``name`` to with ``options``
    (a signature's or apply_async's; the task's own ``queue`` attribute when
    they name none), or None when the router fails or names no queue."""
    opts = dict(options or {})
    task = app.tasks.get(name)
    if "queue" not in opts and getattr(task, "queue", None):
        opts["queue"] = task.queue
    try:
        route = app.amqp.router.route(opts, name, args, kwargs or {})
    except Exception:
        return None  # a router that fails here fails at the publish too
    queue = route.get("queue")
    found = getattr(queue, "name", queue)
    return found if isinstance(found, str) else None
