"""The project's Celery app (Celery's Django layout) and its Durable."""

import os

from celery import Celery

from dbos_celery.contrib.django import durable_for

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The project's Durable: its tables in DATABASES["default"] (read when it
# first connects, so tests use the test database), its options from
# settings.DBOS_CELERY, and the workflows.py module of every installed app
# loaded by the workers.
durable = durable_for(app)
