"""An order starts its workflow in the order's own transaction
(``connection=``): the workflow runs once the order is committed, and never
if the order rolls back."""

import json

from django.db import IntegrityError, connection, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from dbos_celery import NonExistentWorkflowError
from dbos_celery.contrib.django import get_durable

from .models import Widget
from .workflows import fulfil, workflow_id


def _order(name: str) -> Widget:
    widget = Widget.objects.create(name=name)
    fulfil.start(widget.pk, workflow_id=workflow_id(widget.pk), connection=connection)
    return widget


@csrf_exempt
@require_POST
def order_widget(request: HttpRequest) -> JsonResponse:
    name = json.loads(request.body)["name"]
    try:
        with transaction.atomic():
            widget = _order(name)
    except IntegrityError:
        return JsonResponse({"error": f"{name!r} is taken"}, status=409)
    return JsonResponse({"widget": widget.pk, "workflow_id": workflow_id(widget.pk)}, status=201)


@csrf_exempt
@require_POST
def order_batch(request: HttpRequest) -> JsonResponse:
    """All or nothing: a name that is taken rolls the whole batch back, the
    workflows already started for the others included (they never run)."""
    names = json.loads(request.body)["names"]
    try:
        with transaction.atomic():
            widgets = [_order(name) for name in names]
    except IntegrityError:
        return JsonResponse({"error": "a name is taken; nothing was ordered"}, status=409)
    return JsonResponse({"widgets": [w.pk for w in widgets]}, status=201)


@csrf_exempt
@require_POST
def payment_webhook(request: HttpRequest) -> JsonResponse:
    """The payment provider's webhook, retried until it gets a 200: each
    event reaches the workflow once (its id is the idempotency key)."""
    event = json.loads(request.body)
    try:
        get_durable().send(workflow_id(event["widget"]), {"amount": event["amount"]},
                           topic="payment", idempotency_key=event["id"])  # fmt: skip
    except NonExistentWorkflowError:
        return JsonResponse({"error": "no such widget"}, status=404)
    return JsonResponse({"ok": True})


@require_GET
def widget_status(request: HttpRequest, widget_id: int) -> JsonResponse:
    widget = Widget.objects.filter(pk=widget_id).first()
    if widget is None:
        return JsonResponse({"error": "no such widget"}, status=404)
    handle = get_durable().retrieve(workflow_id(widget_id))
    status = handle.status()
    body = {"name": widget.name, "status": widget.status,
            "shipments": widget.shipments.count(), "workflow": status.status,
            "error": status.error}  # fmt: skip
    if status.status == "SUCCESS":
        body["result"] = handle.result()
    return JsonResponse(body)
