"""Durable execution for existing Celery apps."""

from .calls.dispatch import TaskCall
from .context import WorkflowIdFilter
from .durable import Durable
from .errors import (
    CallWouldDeadlockError,
    ConfigurationError,
    ConflictingWorkflowIdError,
    DatabaseUnavailableError,
    DurableError,
    InvalidArgumentError,
    LeaseLostError,
    MaxStepAttemptsError,
    MessageTooLargeError,
    NonDeterministicWorkflowError,
    NonExistentWorkflowError,
    NotInWorkflowError,
    ResultTimeoutError,
    SchemaVersionError,
    SendFromStepError,
    SerializationError,
    StepError,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowNotRegisteredError,
    WorkflowNotResumableError,
)
from .step import Step
from .workflow import StepInfo, Workflow, WorkflowHandle, WorkflowStatus

__all__ = [
    "CallWouldDeadlockError",
    "ConfigurationError",
    "ConflictingWorkflowIdError",
    "DatabaseUnavailableError",
    "Durable",
    "DurableError",
    "InvalidArgumentError",
    "LeaseLostError",
    "MaxStepAttemptsError",
    "MessageTooLargeError",
    "NonDeterministicWorkflowError",
    "NonExistentWorkflowError",
    "NotInWorkflowError",
    "ResultTimeoutError",
    "SchemaVersionError",
    "SendFromStepError",
    "SerializationError",
    "Step",
    "StepError",
    "StepInfo",
    "TaskCall",
    "Workflow",
    "WorkflowCancelledError",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowIdFilter",
    "WorkflowNotRegisteredError",
    "WorkflowNotResumableError",
    "WorkflowStatus",
]
