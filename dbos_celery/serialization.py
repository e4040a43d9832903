"""Encode and decode values through kombu's serializer registry.

JSON by default: safe to read back from a shared database. Apps that chose
pickle for Celery can choose it here too (``Durable(serializer="pickle")``).
Recorded exceptions are stored as plain data (type name, message, args, and
the formatted traceback for people to read) and rebuilt only from classes
already imported in the process: nothing is imported or unpickled because
the database said so.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

from kombu.serialization import dumps, loads, registry

from .errors import ConfigurationError, SerializationError, StepError


class Serializer:
    def __init__(self, name: str = "json") -> None:
        if name not in registry._encoders:
            raise ConfigurationError(
                f"unknown serializer {name!r}; kombu knows {sorted(registry._encoders)}"
            )
        self.name = name
        self._content_type, self._encoding, _ = registry._encoders[name]

    def dumps(self, value: Any, what: str = "value") -> bytes:
        try:
            _, encoding, data = dumps(value, serializer=self.name)  # type: ignore[no-untyped-call]
        except Exception as exc:  # kombu wraps encoder failures in EncodeError
            raise SerializationError(what, str(exc.__cause__ or exc)) from exc
        if isinstance(data, str):
            return data.encode(encoding or "utf-8")
        return bytes(data)

    def loads(self, data: bytes | None) -> Any:
        if data is None:
            return None
        try:
            return loads(  # type: ignore[no-untyped-call]
                bytes(data),
                self._content_type,
                self._encoding,
                accept={self._content_type},
            )
        except Exception as exc:
            raise SerializationError("stored value", str(exc)) from exc

    def dumps_error(self, exc: BaseException) -> bytes:
        cls = type(exc)
        args: list[Any] = list(exc.args)
        try:
            self.dumps(args)
        except SerializationError:
            args = [str(exc)]
        record = {
            "module": cls.__module__,
            "qualname": cls.__qualname__,
            "message": str(exc),
            "args": args,
        }
        if exc.__traceback__ is not None:  # for people (the dashboard); never read back
            record["traceback"] = _traceback_text(exc)
        return self.dumps(record, "error")

    def loads_error(self, data: bytes) -> BaseException:
        record = self.loads(data)
        return rebuild_exception(
            record["module"], record["qualname"], record["message"], record["args"]
        )


MAX_TRACEBACK = 16_000  # characters kept of a recorded traceback: its head and its tail


def _traceback_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    if len(text) <= MAX_TRACEBACK:
        return text
    half = MAX_TRACEBACK // 2
    return f"{text[:half]}\n... ({len(text) - 2 * half} characters cut) ...\n{text[-half:]}"


def rebuild_exception(
    module_name: str, qualname: str, message: str, args: list[Any]
) -> BaseException:
    """The original exception where its class is already imported and accepts
    its args; otherwise a StepError carrying type name and message."""
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and issubclass(obj, BaseException):
        try:
            return obj(*args)
        except Exception:
            pass
    type_name = qualname if module_name == "builtins" else f"{module_name}.{qualname}"
    return StepError(type_name, message)
