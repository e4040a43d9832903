"""Workflow statuses."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """The status of a workflow row. Compares equal to its name as a str."""

    ENQUEUED = "ENQUEUED"  # stored; its Celery message is queued (or due again)
    PENDING = "PENDING"  # running under a live executor (the lease)
    WAITING = "WAITING"  # parked: no runner; published again when woken
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"
    MAX_RECOVERY_ATTEMPTS_EXCEEDED = "MAX_RECOVERY_ATTEMPTS_EXCEEDED"

    def __str__(self) -> str:
        return self.value


FINAL = (Status.SUCCESS, Status.ERROR, Status.CANCELLED, Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED)
LIVE = (Status.ENQUEUED, Status.PENDING, Status.WAITING)
RESUMABLE = (Status.CANCELLED, Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED)
