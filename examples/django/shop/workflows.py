"""The shop's workflows, found by the workers as Celery finds tasks.py.

The shared decorators need no Durable here: they bind to the project's
(proj/celery.py) when it exists, as Celery's shared_task binds to the app.
"""

from dbos_celery.contrib.django import get_durable
from dbos_celery.shared import shared_step, shared_transaction, shared_workflow

from .models import Shipment, Widget


def workflow_id(widget_id: int) -> str:
    return f"widget-{widget_id}"


@shared_step()
def describe(widget_id: int) -> str:
    # the widget was committed with the workflow: never DoesNotExist
    return Widget.objects.get(pk=widget_id).name


@shared_transaction()
def ship(widget_id: int) -> int:
    # the ORM's writes and the step's checkpoint commit in one transaction:
    # a crash before the commit leaves nothing, a replay after it skips it
    shipment = Shipment.objects.create(widget_id=widget_id)
    Widget.objects.filter(pk=widget_id).update(status="shipped")
    return shipment.pk


@shared_workflow()
def fulfil(widget_id: int) -> str:
    name = describe(widget_id)
    payment = get_durable().recv("payment", timeout=3600)
    if payment is None:
        return f"{name}: not paid within an hour"
    ship(widget_id)
    return f"{name}: shipped ({payment['amount']:.2f} paid)"
