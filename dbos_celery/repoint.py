"""What a Durable runs on for a ``Durable.using(...)`` block: its database,
settings and wakeups, built from its current ones and the block's
arguments, and checked as ``Durable(...)`` checks them, before anything of
the Durable changes. Nothing connects here."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple

from . import config
from .errors import ConfigurationError
from .keys import channel_prefix
from .store.engine import Database
from .wakeup import LocalNotifier, Notifier, RedisNotifier

if TYPE_CHECKING:
    from .store.engine import Engine

# the options of Durable(...) a block may change besides its database and
# wakeups (the schema is an argument of its own)
OPTIONS = frozenset(f.name for f in dataclasses.fields(config.Settings)) - {"schema"}


class Binding(NamedTuple):
    """What ``Services.rebind`` takes."""

    store: Database
    settings: config.Settings
    notifier: Notifier


def configure(
    store: Database,
    settings: config.Settings,
    database_url: str | None,
    engine: Engine | None,
    schema: str | None,
    redis_url: str | None,
    options: dict[str, Any],
) -> Binding:
    """The binding of a block, from the current ``store`` and ``settings``:
    a database (``database_url`` or ``engine``; neither: the current one),
    a schema (None: the current one), the wakeups (``redis_url``; None:
    in-process, never the environment's) and ``options`` (the others keep
    their current values)."""
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"Durable.using() takes the options of Durable(...) (database_url, engine, schema, "
            f"redis_url, {', '.join(sorted(OPTIONS))}); got {unknown}"
        )
    fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(config.Settings)}
    fields.update(options)
    if schema is not None:
        fields["schema"] = schema
    fields["retention"] = config.retention(fields["retention"])
    new = config.Settings(**fields)
    retry = new.database_retry_timeout
    if database_url is None and engine is None:
        db = store.with_options(schema=new.schema, retry_timeout=retry)
    else:
        url = config.database_url(database_url, engine)
        db = Database(url, engine=engine, schema=new.schema, retry_timeout=retry)
    redis = config.redis_url(redis_url, environ=False)
    notifier: Notifier = (
        RedisNotifier(redis, channel_prefix(new.schema)) if redis else LocalNotifier()
    )
    return Binding(db, new, notifier)
