"""Settings of the example project, from the environment: DATABASE_URL
(Postgres), REDIS_URL (wakeups; unset: polling), BROKER_URL, SCHEMA (of the
dbos_celery tables) and QUEUE (of the workflows)."""

import os
from urllib.parse import unquote, urlsplit

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "dbos_celery.contrib.django",  # manage.py migrate creates our tables too
    "shop",
]
ROOT_URLCONF = "proj.urls"
WSGI_APPLICATION = "proj.wsgi.application"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _database(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": parts.port or "",
    }


DATABASES = {
    "default": _database(
        os.environ.get("DATABASE_URL", "postgresql://postgres:postgres@127.0.0.1:5432/shop")
    )
}

CELERY_BROKER_URL = os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/1")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("QUEUE", "shop")

# the options of the project's Durable (proj/celery.py)
DBOS_CELERY = {
    "schema": os.environ.get("SCHEMA", "dbos_celery"),
    "redis_url": os.environ.get("REDIS_URL") or None,
}

# closes the Durable's connections before the test database is dropped
TEST_RUNNER = "dbos_celery.contrib.django.runner.DiscoverRunner"
