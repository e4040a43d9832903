"""compose.yaml starts what the README promises: Postgres, Redis and a
worker running the checkout example, each with a healthcheck, the worker
started once both servers are healthy and pointed at them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support import ROOT

APP = "examples.checkout.app"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(compose, dict) and isinstance(compose.get("services"), dict), compose
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, written as a mapping or as a KEY=value list."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command(value: Any) -> str:
    return value if isinstance(value, str) else " ".join(map(str, value))


def test_compose_has_postgres_redis_and_a_checkout_worker(services: dict[str, Any]) -> None:
    assert {"postgres", "redis", "worker"} <= services.keys()
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert f"celery -A {APP} worker" in command(services["worker"]["command"])
    assert (ROOT / APP.replace(".", "/")).with_suffix(".py").is_file()


@pytest.mark.parametrize(
    ("name", "probe"),
    [("postgres", "pg_isready"), ("redis", "redis-cli ping"), ("worker", f"-A {APP} inspect ping")],
)
def test_every_service_has_a_healthcheck(services: dict[str, Any], name: str, probe: str) -> None:
    check = services[name].get("healthcheck")
    assert check and not check.get("disable"), f"{name} has no healthcheck"
    test = check["test"]
    assert isinstance(test, str) or test[0] in ("CMD", "CMD-SHELL"), test
    assert probe in command(test if isinstance(test, str) else test[1:])
    assert int(check.get("retries", 3)) >= 3


def test_worker_starts_after_postgres_and_redis_are_healthy(services: dict[str, Any]) -> None:
    depends = services["worker"]["depends_on"]
    assert isinstance(depends, dict), "depends_on needs conditions (the long form)"
    for server in ("postgres", "redis"):
        assert depends[server]["condition"] == "service_healthy"


def test_worker_environment_points_at_the_compose_services(services: dict[str, Any]) -> None:
    env = environment(services["worker"])
    pg = environment(services["postgres"])
    database = urlsplit(env["DATABASE_URL"])
    assert database.scheme in ("postgresql", "postgresql+psycopg")
    assert (database.hostname, database.port or 5432) == ("postgres", 5432)
    assert database.path == "/" + pg.get("POSTGRES_DB", database.username or "postgres")
    assert (database.password or "") == pg.get("POSTGRES_PASSWORD", "")
    for var in ("REDIS_URL", "BROKER_URL"):
        url = urlsplit(env[var])
        assert (url.scheme, url.hostname, url.port or 6379) == ("redis", "redis", 6379), var
