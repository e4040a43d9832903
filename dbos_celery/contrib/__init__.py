"""Integrations with frameworks: ``dbos_celery.contrib.django``."""
