from django.db import models


class Widget(models.Model):
    """A widget ordered by a customer, built and shipped by a workflow."""

    name = models.CharField(max_length=100, unique=True)
    status = models.CharField(max_length=20, default="ordered")  # then "shipped"
    created = models.DateTimeField(auto_now_add=True)


class Shipment(models.Model):
    """One per shipped widget: written by a transaction step, so exactly once."""

    widget = models.ForeignKey(Widget, on_delete=models.CASCADE, related_name="shipments")
    shipped = models.DateTimeField(auto_now_add=True)
