"""Django integration.

In ``proj/celery.py`` (Celery's Django layout)::

    app = Celery("proj")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.autodiscover_tasks()
    durable = durable_for(app)      # DATABASES["default"], workflows.py of each app

and ``"dbos_celery.contrib.django"`` in ``INSTALLED_APPS`` (``manage.py
migrate`` creates the schema; ``manage.py dbos_celery ...`` manages
workflows). Apps declare workflows with ``dbos_celery.shared`` decorators and
reach the Durable with :func:`get_durable`. See ``docs/django.md``.
"""

from .database import database_url
from .project import durable_for, get_durable
from .transactions import DjangoTransactions

__all__ = ["DjangoTransactions", "database_url", "durable_for", "get_durable"]
