"""The server-side timeouts the project's own sessions set for themselves.

A database or role can carry a `statement_timeout` or `lock_timeout` (``ALTER DATABASE ... SET``)
meant for interactive users. The project's sessions set their own values in the connection's
startup options, which take precedence over those defaults, so a limit chosen for someone else
cannot cancel a rebuild half-way or make the sink give up on a batch:

* the projector (`project`, `project --once`, `rebuild`; :data:`PROJECTION_KWARGS`):
  ``statement_timeout = 0`` and ``lock_timeout = 0``. Its statements are bounded by its chunk
  size (a rebuild by the size of the log: 84 s for 10 M events) and its only waits are for
  another projector's transaction, which it is meant to wait for;
* the sink (:func:`session_kwargs` with `PostgresEventSink(lock_timeout=...)`, default
  :data:`SINK_LOCK_TIMEOUT`): ``statement_timeout = 0`` (its statements are bounded by
  `batch_size`) and a bounded ``lock_timeout``: a lock wait that runs out is retried with
  backoff, and after `retry_for` seconds the sink raises
  :class:`~projector.errors.LockTimeout` naming the session that holds the lock.

A timeout that still cancels a statement is reported as
:class:`~projector.errors.DatabaseTimeout`, naming the setting to raise.
"""

from __future__ import annotations

from typing import Any, Final

from .database import CONNECT_KWARGS

__all__ = ["PROJECTION_KWARGS", "SINK_LOCK_TIMEOUT", "session_kwargs"]

#: Seconds a sink transaction waits for a lock before the attempt fails and is retried.
SINK_LOCK_TIMEOUT: Final = 5.0


def _milliseconds(seconds: float) -> int:
    if seconds < 0:
        raise ValueError("timeouts must be >= 0 seconds (0: no limit)")
    return round(seconds * 1000)


def session_kwargs(*, statement_timeout: float = 0.0, lock_timeout: float = 0.0) -> dict[str, Any]:
    """:data:`~projector.database.CONNECT_KWARGS` with these timeouts (seconds, 0: no limit) in
    the session's startup options."""
    options = (
        f"{CONNECT_KWARGS['options']} -c statement_timeout={_milliseconds(statement_timeout)}"
        f" -c lock_timeout={_milliseconds(lock_timeout)}"
    )
    return {**CONNECT_KWARGS, "options": options}


#: The connection arguments of the projector's sessions (no statement or lock timeout).
PROJECTION_KWARGS: Final = session_kwargs()
