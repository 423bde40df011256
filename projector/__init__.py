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
from .pgsink import BatchResult, PostgresEventSink, RawEnvelope, Rejection
from .sinks import EventEmitter, EventSink, NoopSink, StdoutEventSink

__all__ = [
    "BatchResult",
    "ConfigurationError",
    "DatabaseUnavailable",
    "EventConflict",
    "EventEmitter",
    "EventSink",
    "ExecutorEvent",
    "InvalidEnvelope",
    "NatsEventSink",
    "NoopSink",
    "PostgresEventSink",
    "ProjectorError",
    "RawEnvelope",
    "Rejection",
    "SchemaMissing",
    "StdoutEventSink",
    "UnknownExecution",
]
__version__ = "0.1.0"
