"""The pages: the workflow list (``/``) and one workflow
(``/workflows/<id>``); each also answers htmx's live refresh with the part
of itself that changes."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..errors import DurableError
from ..status import Status
from ..store import inspect
from ..validation import check_id
from . import paging
from .paging import BadQuery
from .site import Site, path_part
from .views import error_view, inputs_view, timeline, value_text, wait_view

COUNT_CAP = 10_000  # counts by status stop here ("10,000+"): bounded work per refresh


class Pages:
    def __init__(self, site: Site) -> None:
        self.site = site

    def _problem(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.site.render(request, "problem.html", status=status, message=message)

    # --- / --------------------------------------------------------------------

    def index(self, request: Request) -> Response:
        site = self.site
        try:
            q = paging.page_query(request.query_params)
        except BadQuery as exc:
            return self._problem(request, 400, str(exc))
        if q.id_prefix and not (q.before or q.after) and "hx-request" not in request.headers:
            # a whole id: straight to its page
            if site.store.now(inspect.workflow_record, q.id_prefix) is not None:
                base = request.scope.get("root_path", "").rstrip("/")
                return RedirectResponse(f"{base}/workflows/{path_part(q.id_prefix)}", 303)
        rows, counts = site.store.run(inspect.listing, q, COUNT_CAP)
        filters = paging.filters(q)
        live = request.query_params.get("live") != "0"
        here = {**filters}
        if q.before is not None:
            here["older"] = paging.encode_cursor(q.before)
        if q.after is not None:
            here["newer"] = paging.encode_cursor(q.after)
        base = request.scope.get("root_path", "").rstrip("/")
        older = newer = None
        cursor = paging.encode_cursor
        if rows:
            back = q.after is not None  # a page back: there is an older page for sure
            if back or len(rows) == q.limit:
                older = paging.url(base, {**filters, "older": cursor(rows[-1].cursor)})
            if q.before is not None or (back and len(rows) == q.limit):
                newer = paging.url(base, {**filters, "newer": cursor(rows[0].cursor)})
        ctx: dict[str, Any] = dict(
            q=q, rows=[self._listed(r) for r in rows], counts=counts, cap=COUNT_CAP,
            statuses=paging.STATUSES, filters=filters, live=live,
            refresh_url=paging.url(base, {**here, "live": "1"}),
            older=older, newer=newer, first=paging.url(base, filters),
            status_url=lambda s: paging.url(base, paging.with_status(q, s)),
            pause_url=paging.url(base, {**here, "live": "0"}),
            resume_url=paging.url(base, here),
            names=site.store.now(inspect.known_names) if "hx-request" not in request.headers
            else [],
        )  # fmt: skip
        if "hx-request" in request.headers:
            return site.render(request, "_rows.html", **ctx)
        return site.render(request, "index.html", **ctx)

    def _listed(self, r: inspect.ListedWorkflow) -> dict[str, Any]:
        err = error_view(self.site.durable.services.codec, r.error)
        return {"w": r, "error": None if err is None else err.summary}

    # --- /workflows/<id> -------------------------------------------------------

    def workflow(self, request: Request) -> Response:
        site = self.site
        workflow_id = request.path_params["workflow_id"]
        try:
            check_id(workflow_id, "workflow id")
        except DurableError as exc:
            return self._problem(request, 400, str(exc))
        ctx = self.workflow_context(workflow_id)
        if ctx is None:
            return self._problem(request, 404, f"no workflow {workflow_id!r}")
        part = "_workflow_live.html" if "hx-request" in request.headers else "workflow.html"
        return site.render(request, part, **ctx)

    def workflow_context(self, workflow_id: str) -> dict[str, Any] | None:
        """Everything the workflow page shows; None when there is no such workflow."""
        site = self.site
        store, codec = site.store, site.durable.services.codec
        rec = store.now(inspect.workflow_record, workflow_id)
        if rec is None:
            return None
        checkpoints = store.now(inspect.timeline, workflow_id, TIMELINE_LIMIT)
        tl = timeline(codec, rec.created_at, checkpoints)
        wanted = set(tl.executors) | {x for x in (rec.executor_id, rec.reserved_by) if x}
        workers = store.now(inspect.workers_by_id, sorted(wanted))
        for row in tl.rows:
            row.worker = workers.get(row.started_by or "")
        wait = wait_view(rec, tl.rows)
        now = datetime.now(timezone.utc)
        if wait is not None and not wait.parked and wait.until is not None and wait.until < now:
            wait = None  # that wait is over: the workflow runs on
        kids, n_kids = store.now(inspect.children, workflow_id, CHILDREN_LIMIT)
        args, kwargs = inputs_view(codec, rec.inputs)
        steps = [r.seq for r in tl.rows]
        return dict(
            w=rec, args=args, kwargs=kwargs,
            output=value_text(codec, rec.output) if rec.status == Status.SUCCESS else None,
            error=error_view(codec, rec.error), timeline=tl.rows,
            truncated=len(checkpoints) >= TIMELINE_LIMIT, wait=wait,
            executor=workers.get(rec.executor_id or ""),
            reserved=workers.get(rec.reserved_by or ""),
            worker_timeout=site.durable.services.settings.worker_timeout,
            mailboxes=store.now(inspect.mailboxes, workflow_id),
            messages=[
                replace_payload(m, value_text(codec, m.payload))
                for m in store.now(inspect.waiting_messages, workflow_id, MESSAGES_LIMIT)
            ],
            events=[(e, value_text(codec, e.value))
                    for e in store.now(inspect.events_of, workflow_id, EVENTS_LIMIT)],
            children=kids, n_children=n_kids,
            resumable=rec.status in (Status.CANCELLED, Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED),
            live=rec.status in (Status.ENQUEUED, Status.PENDING, Status.WAITING),
            last_step=max(steps) if steps else 0,
        )  # fmt: skip


TIMELINE_LIMIT = 2000
CHILDREN_LIMIT = 200
MESSAGES_LIMIT = 50
EVENTS_LIMIT = 200


def replace_payload(m: inspect.Message, text: str | None) -> dict[str, Any]:
    return {"id": m.id, "topic": m.topic, "created_at": m.created_at, "payload": text}
