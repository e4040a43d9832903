"""Run with Django's test runner: ``python manage.py test shop``. The test
database gets the dbos_celery schema from ``migrate`` like any app's tables,
and the project's Durable uses it (its URL is read at first use)."""

import json

from django.db import connection
from django.test import TestCase, TransactionTestCase

from dbos_celery.contrib.django import get_durable
from dbos_celery.testing import start_durable_worker

from .models import Shipment, Widget
from .workflows import ship


class OrderTests(TransactionTestCase):
    """Views that commit: a TransactionTestCase (in a TestCase the order and
    its workflow stay in the test's transaction, and never run)."""

    def post(self, path: str, body: object) -> tuple[int, dict[str, object]]:
        response = self.client.post(path, json.dumps(body), content_type="application/json")
        return response.status_code, response.json()

    def test_order_stores_its_workflow_in_the_test_database(self) -> None:
        status, body = self.post("/widgets/", {"name": "sprocket"})
        self.assertEqual(status, 201)
        handle = get_durable().retrieve(str(body["workflow_id"]))
        self.assertEqual(handle.status().name, "shop.workflows.fulfil")
        self.assertTrue(connection.settings_dict["NAME"].startswith("test_"))

    def test_batch_with_a_taken_name_orders_nothing(self) -> None:
        before = len(get_durable().list_workflows())
        self.post("/widgets/", {"name": "cog"})
        status, _ = self.post("/widgets/batch/", {"names": ["gear", "cog"]})
        self.assertEqual(status, 409)
        self.assertEqual(list(Widget.objects.values_list("name", flat=True)), ["cog"])
        self.assertEqual(len(get_durable().list_workflows()), before + 1)

    def test_paid_order_ships_once_on_a_worker_in_this_process(self) -> None:
        with start_durable_worker(get_durable()):
            _, body = self.post("/widgets/", {"name": "axle"})
            for _ in range(2):  # a retried webhook
                self.post("/webhooks/payment/", {"id": "evt-9", "widget": body["widget"],
                                                 "amount": 5})  # fmt: skip
            handle = get_durable().retrieve(str(body["workflow_id"]))
            self.assertEqual(handle.result(timeout=30), "axle: shipped (5.00 paid)")
        self.assertEqual(Shipment.objects.count(), 1)


class ShipTests(TestCase):
    def test_ship_outside_a_workflow_is_one_plain_transaction(self) -> None:
        widget = Widget.objects.create(name="flange")
        ship(widget.pk)
        self.assertEqual(Shipment.objects.filter(widget=widget).count(), 1)
        widget.refresh_from_db()
        self.assertEqual(widget.status, "shipped")
