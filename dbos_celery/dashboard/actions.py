"""The actions: send a message, cancel, resume, fork.

Each is a form POSTed twice: the first POST checks it and asks for
confirmation (writing nothing), the second, with ``confirmed=yes``, acts
and reports what happened. Both need the CSRF value (and the token, see
``security.py``); a read-only dashboard refuses them (403). Sends carry an
idempotency key made when the confirmation page is shown, so a form
submitted twice stores its message once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .. import management
from ..errors import (
    DatabaseUnavailableError,
    DurableError,
    InvalidArgumentError,
    NonExistentWorkflowError,
)
from ..store import inspect
from ..validation import check_id
from .security import CSRF_FIELD, new_nonce
from .site import Site

ACTIONS = ("send", "cancel", "resume", "fork")
MAX_FORM_BYTES = 4 << 20  # a message is at most max_message_bytes (1 MiB) serialized
MAX_KEY = 64


class BadForm(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form (the only kind the pages send), at most MAX_FORM_BYTES."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise BadForm(415, "expected a form (application/x-www-form-urlencoded)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadForm(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise BadForm(400, "the form is not UTF-8 text") from None
    return {k: v[0] for k, v in parsed.items()}


@dataclass
class Plan:
    """A checked action, ready to confirm or to run."""

    action: str
    workflow_id: str
    status: str
    fields: dict[str, str] = field(default_factory=dict)  # sent again on confirmation
    value: Any = None  # a send's decoded body
    preview: str | None = None


class Actions:
    def __init__(self, site: Site) -> None:
        self.site = site

    async def act(self, request: Request) -> Response:
        site = self.site
        action = request.path_params["action"]
        if action not in ACTIONS:
            return self._problem(request, 404, f"no action {action!r}")
        if site.read_only:
            return self._problem(request, 403, "this dashboard is read-only: no actions")
        try:
            form = await read_form(request)
        except BadForm as exc:
            return self._problem(request, exc.status, str(exc))
        if not (site.guard.bearer(request) or site.guard.csrf_ok(request, form.get(CSRF_FIELD))):
            return self._problem(request, 403, "refused: this form did not come from this "
                                 "dashboard's own page (CSRF check). Reload the page and try "
                                 "again.")  # fmt: skip
        return await run_in_threadpool(self._act, request, action, form)

    def _problem(self, request: Request, status: int, message: str) -> Response:
        return self.site.render(request, "problem.html", status=status, message=message)

    def _act(self, request: Request, action: str, form: dict[str, str]) -> Response:
        try:
            plan = self._plan(action, form)
        except NonExistentWorkflowError as exc:
            return self._problem(request, 404, str(exc))
        except (InvalidArgumentError, ValueError) as exc:
            return self._problem(request, 400, str(exc))
        except DatabaseUnavailableError as exc:
            return self._problem(request, 503, str(exc))
        if form.get("confirmed") != "yes":
            return self.site.render(request, "confirm.html", plan=plan)
        try:
            done = self._run(plan)
        except NonExistentWorkflowError as exc:
            return self._problem(request, 404, str(exc))
        except InvalidArgumentError as exc:
            return self._problem(request, 400, str(exc))
        except DatabaseUnavailableError as exc:
            return self._problem(request, 503, str(exc))
        except DurableError as exc:  # e.g. not resumable
            return self._problem(request, 409, str(exc))
        except Exception as exc:  # publishing to the broker, say
            return self._problem(request, 502, f"{type(exc).__name__}: {exc}")
        return self.site.render(request, "result.html", plan=plan, **done)

    def _plan(self, action: str, form: dict[str, str]) -> Plan:
        wid = form.get("id", "")
        check_id(wid, "workflow id")
        rec = self.site.store.now(inspect.workflow_record, wid)
        if rec is None:
            raise NonExistentWorkflowError(wid)
        plan = Plan(action, wid, rec.status)
        if action == "send":
            topic, body = form.get("topic", ""), form.get("body", "")
            try:
                plan.value = json.loads(body)
            except ValueError as exc:
                raise InvalidArgumentError(f"the message is not JSON: {exc}") from None
            key = form.get("key") or new_nonce()
            if len(key) > MAX_KEY or not key.replace("-", "").replace("_", "").isalnum():
                raise InvalidArgumentError("a malformed idempotency key")
            plan.fields = {"topic": topic, "body": body, "key": key}
            plan.preview = json.dumps(plan.value, indent=2, ensure_ascii=False)
        elif action == "fork":
            raw = form.get("from_step", "").strip()
            if not raw.isdigit():
                raise InvalidArgumentError(f"from step: a step number >= 0, got {raw!r}")
            new_id = form.get("new_id", "").strip()
            if new_id:
                check_id(new_id, "new id")
            plan.fields = {"from_step": str(int(raw)), "new_id": new_id}
        return plan

    def _run(self, plan: Plan) -> dict[str, Any]:
        """Act; what to report."""
        site, wid = self.site, plan.workflow_id
        sv = site.durable.services
        publish = sv.publish if site.publishes else None
        if plan.action == "send":
            topic = plan.fields["topic"] or None
            site.durable.send(wid, plan.value, topic=topic,
                              idempotency_key=f"dashboard:{plan.fields['key']}")  # fmt: skip
            return {"ok": True, "published": site.publishes}
        if plan.action == "cancel":
            cancelled = management.cancel(sv, wid)
            rec = site.store.now(inspect.workflow_record, wid)
            return {"ok": cancelled, "status_now": None if rec is None else rec.status}
        if plan.action == "resume":
            _, enqueued = management.resume(sv, wid, publish)
            return {"ok": enqueued, "published": site.publishes}
        handle, created = management.fork(sv, wid, int(plan.fields["from_step"]),
                                          plan.fields["new_id"] or None, publish)  # fmt: skip
        return {"ok": created, "new_id": handle.workflow_id, "published": site.publishes}
