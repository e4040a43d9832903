"""Durable execution for existing Celery apps."""

from .durable import Durable
from .errors import (
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
    WorkflowFailedError,
    WorkflowNotRegisteredError,
)
from .step import Step
from .workflow import StepInfo, Workflow, WorkflowHandle, WorkflowStatus

__all__ = [
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
    "Workflow",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowNotRegisteredError",
    "WorkflowStatus",
]
