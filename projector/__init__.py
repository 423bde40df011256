"""noetl-projector: durable history and exact step status for noetl execution events."""

from .envelope import ExecutorEvent
from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    EventConflict,
    InvalidEnvelope,
    ProjectorError,
    SchemaMissing,
    UnknownExecution,
)
from .natsink import NatsEventSink

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailable",
    "EventConflict",
    "ExecutorEvent",
    "InvalidEnvelope",
    "NatsEventSink",
    "ProjectorError",
    "SchemaMissing",
    "UnknownExecution",
]
__version__ = "0.1.0"
