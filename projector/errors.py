"""The project's error types, and the one place that translates driver errors into them.

Every error a user can meet derives from :class:`ProjectorError` and says what to do next.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast

import psycopg
from psycopg import errors as pgerrors

from .redact import redact

__all__ = [
    "ConfigurationError",
    "DatabaseTimeout",
    "DatabaseUnavailable",
    "EventConflict",
    "InvalidEnvelope",
    "LockTimeout",
    "NatsUnavailable",
    "ProjectorError",
    "PublishRejected",
    "SchemaMissing",
    "StreamMissing",
    "UnknownExecution",
    "is_transient",
    "timeout_setting",
    "translate",
    "translating",
]


class ProjectorError(Exception):
    """Base class of every error noetl-projector raises on purpose."""


class ConfigurationError(ProjectorError):
    """A setting is missing or malformed."""


class DatabaseUnavailable(ProjectorError):
    """PostgreSQL could not be reached, or dropped the connection, after all retries."""


class DatabaseTimeout(ProjectorError):
    """The server cancelled a statement because one of its timeouts ran out.

    `setting` names it (``statement_timeout`` or ``lock_timeout``; None when the server's wording
    did not say which). Not transient: the same statement would run into the same limit again.
    The project's own sessions set the timeouts they need (see :mod:`projector.timeouts`), so
    this means a limit was set where the session cannot override it, or a wait really was that
    long.
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        self.setting = setting
        super().__init__(message)


class LockTimeout(DatabaseTimeout, DatabaseUnavailable):
    """The sink waited for a lock past `retry_for` seconds of retries.

    The message names the sessions holding what it waited for (`blockers`: one line each, with
    pid, application_name, user, state and how long its transaction has been open). It is also a
    :class:`DatabaseUnavailable`, so callers that retry later (the NATS bridge naks the batch and
    backs off) treat it as they treat an outage.
    """

    def __init__(self, message: str, blockers: list[str]) -> None:
        self.blockers = blockers
        super().__init__(message, "lock_timeout")


class SchemaMissing(ProjectorError):
    """The `noetl` schema is absent or older than this code: run `projector db upgrade`."""


class InvalidEnvelope(ProjectorError):
    """One envelope could not be read; `position` says which (0-based index or line number)."""

    def __init__(self, reason: str, position: int | None = None) -> None:
        self.reason = reason
        self.position = position
        where = f" at position {position}" if position is not None else ""
        super().__init__(f"invalid envelope{where}: {reason}")


class EventConflict(ProjectorError):
    """An event id was reused with different content; the stored row was left unchanged."""

    def __init__(self, execution_id: str, event_id: str) -> None:
        self.execution_id = execution_id
        self.event_id = event_id
        super().__init__(
            f"event {event_id!r} of execution {execution_id!r} is already stored with different "
            "content; the stored row was kept (give each distinct event its own event_id)"
        )


class UnknownExecution(ProjectorError):
    """No event of this execution id is stored."""

    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        super().__init__(f"no events are stored for execution {execution_id!r}")


class NatsUnavailable(ProjectorError):
    """NATS could not be reached, or JetStream did not answer in time (nothing was acknowledged)."""


class PublishRejected(ProjectorError):
    """JetStream answered a publish with an error (no stream for the subject, limits reached)."""


class StreamMissing(ConfigurationError):
    """The JetStream stream does not exist: run `projector nats init` (or pass create_stream)."""


# SQLSTATE classes that mean "try again": connection exceptions, operator intervention (server
# shutting down or restarting), insufficient resources, serialization failures and deadlocks.
_TRANSIENT_CLASSES = ("08", "57", "53")
_TRANSIENT_STATES = {"40001", "40P01", "55P03"}


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same transaction later may succeed (a :class:`DatabaseTimeout` is
    not, unless it is also a :class:`DatabaseUnavailable`, as :class:`LockTimeout` is)."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, DatabaseTimeout):
        return False
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        state = getattr(exc, "sqlstate", None)
        return state is None or state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES
    state = getattr(exc, "sqlstate", None)
    if state is None:
        return False
    return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES


# The server's wording of its timeout cancellations (message_primary of SQLSTATE 57014 / 55P03).
_TIMEOUT_MESSAGES = {
    "canceling statement due to statement timeout": "statement_timeout",
    "canceling statement due to lock timeout": "lock_timeout",
}


def timeout_setting(exc: BaseException) -> str | None:
    """The setting whose timeout cancelled the statement that raised `exc` (None when `exc` is
    not such a cancellation). A 57014 in words this does not know (a server with other
    `lc_messages`) counts as a timeout of either setting, ``"statement_timeout or lock_timeout"``,
    unless it says it was a cancel request."""
    state = getattr(exc, "sqlstate", None)
    if state not in ("57014", "55P03"):
        return None
    diag = getattr(exc, "diag", None)
    message = str(getattr(diag, "message_primary", None) or exc).strip()
    setting = _TIMEOUT_MESSAGES.get(message)
    if setting is not None or state == "55P03" or "user request" in message:
        return setting  # 55P03 otherwise: NOWAIT / SKIP LOCKED refusals, not a timeout
    return "statement_timeout or lock_timeout"


def _timeout_error(exc: BaseException, setting: str) -> DatabaseTimeout:
    return DatabaseTimeout(
        f"a statement ran into PostgreSQL's {setting} and was cancelled "
        f"({str(exc).strip()}); raise {setting} for this role or database (for example "
        f"`ALTER ROLE ... SET {setting.split()[0]} = '5min'`), or find what held it up",
        setting,
    )


def _driver_error(exc: BaseException) -> BaseException:
    """The psycopg error inside a SQLAlchemy one (SQLAlchemy wraps it as `.orig`)."""
    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.DBAPIError) and isinstance(exc.orig, BaseException):
        return exc.orig
    return exc


def translate(exc: BaseException) -> ProjectorError:
    """Map a psycopg, psycopg_pool or SQLAlchemy error to the project's error type, keeping the
    cause. (SQLAlchemy is how the migrations connect; its errors wrap psycopg's.)"""
    import sqlalchemy.exc
    from psycopg_pool import PoolTimeout

    if isinstance(exc, ProjectorError):
        return exc
    inner = _driver_error(exc)
    if inner is not exc:
        return translate(inner)
    err: ProjectorError
    detail = redact(str(exc).strip())  # a driver may quote the URL, or a piece of it
    if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
        # Not a driver error: a malformed URL, a missing dialect, a misused engine.
        err = ConfigurationError(f"database error: {detail}")
    elif isinstance(
        exc, pgerrors.UndefinedTable | pgerrors.InvalidSchemaName | pgerrors.UndefinedFunction
    ):
        err = SchemaMissing(
            f"the noetl schema is missing or out of date ({exc.diag.message_primary}); "
            "run `projector db upgrade` (or `alembic upgrade head`)"
        )
    elif isinstance(exc, pgerrors.InsufficientPrivilege):
        err = ProjectorError(
            f"database error: {detail}; the login lacks the role this needs (README, 'Roles': "
            "noetl_reader reads, noetl_writer stores events, noetl_projector projects; "
            "migrations and `db retention` run as the schema's owner)"
        )
    elif isinstance(exc, PoolTimeout):
        err = DatabaseUnavailable(
            f"could not get a PostgreSQL connection in time ({exc}); is the server running and is "
            "PROJECTOR_DATABASE_URL right?"
        )
    elif (setting := timeout_setting(exc)) is not None:
        err = _timeout_error(exc, setting)
    elif is_transient(exc):
        err = DatabaseUnavailable(f"PostgreSQL is unavailable: {detail}")
    else:
        err = ProjectorError(f"database error: {detail}")
    err.__cause__ = exc
    return err


def _translatable() -> tuple[type[BaseException], ...]:
    """The exceptions `translating` turns into the project's own (others pass through)."""
    import sqlalchemy.exc
    from psycopg_pool import PoolTimeout

    return (psycopg.Error, PoolTimeout, sqlalchemy.exc.SQLAlchemyError)


_F = TypeVar("_F", bound=Callable[..., Any])


class translating:
    """The error boundary: driver errors raised inside become :class:`ProjectorError` subclasses.

    Use it where connections are checked out, as a context manager (``with translating():``,
    also around ``await`` expressions) or as a decorator of a function or coroutine function.
    psycopg, psycopg_pool and SQLAlchemy errors are translated by :func:`translate` (the cause is
    kept); the project's own errors and everything else pass through unchanged.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, _translatable()) and not isinstance(exc, ProjectorError):
            raise translate(exc) from exc

    def __call__(self, fn: _F) -> _F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await fn(*args, **kwargs)

            return cast(_F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return cast(_F, wrapper)
