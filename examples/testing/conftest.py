"""What a project's ``conftest.py`` holds to test its workflows with the
plugin: load it, and say which Durable the tests run (the one the app
module builds, pointed at a throwaway database for each test)."""

import pytest

from dbos_celery import Durable

pytest_plugins = ["dbos_celery.testing"]


@pytest.fixture
def durable_instance() -> Durable:
    from examples.checkout.app import durable

    return durable
