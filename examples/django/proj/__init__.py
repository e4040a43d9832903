"""The example project. Importing it loads the Celery app (and so the
project's Durable), as in Celery's Django layout."""

from .celery import app as celery_app

__all__ = ("celery_app",)
