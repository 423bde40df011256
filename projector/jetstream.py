"""What the NATS sink and the bridge share: names and defaults, subject mapping, stream set-up,
connecting, and translating nats-py errors into the project's errors (:func:`translate_nats`, the
one place that does; the fast paths on nats-py's internals are in :mod:`projector.natswire`).

The ``DEFAULT_*`` names are the defaults of :class:`projector.settings.Settings` (``nats_url``,
``nats_stream``, ``nats_subject_prefix``, ``nats_durable``), used as the Python API's defaults;
the command line takes its defaults from :func:`projector.settings.settings`, so the
``PROJECTOR_NATS_*`` variables apply there.

Subjects
--------
Events are published to ``<subject_prefix>.<token>`` where ``<token>`` is the execution id made
safe for one NATS subject token (:func:`subject_token`): every byte of the id's UTF-8 form that is
not a printable ASCII character other than ``.``, ``*``, ``>`` and ``%`` is written as ``%XX``
(upper-case hex), so ``exec 1.2`` becomes ``exec%201%2E2``. Snowflake ids (digits) and the usual
``[A-Za-z0-9_-:]`` ids pass through unchanged. The mapping is injective; ids whose escaped form
would exceed :data:`MAX_TOKEN_LENGTH` characters become ``%H`` followed by 40 hex digits of their
SHA-256 (``%H`` never appears in an escaped id, so such tokens cannot collide with short ones).

Message ids
-----------
The ``Nats-Msg-Id`` header is :func:`msg_id`: execution id and event id, both escaped as above, and
the content hash of the published bytes, joined by dots: event ids need only be unique within their
execution, and only a re-publish of the same envelope is a duplicate for the broker.

Stream
------
:func:`ensure_stream` creates the stream (default ``NOETL_EVENTS`` over ``noetl.events.>``) with
the limits in :class:`StreamLimits`: file storage, limits retention (messages stay until
``max_age`` / ``max_bytes``, whoever has read them, so upstream noetl's own per-shard consumers can
attach to the same subjects beside the bridge's durable consumer, which alone decides what the
bridge has stored), ``discard=new`` (a full stream refuses publishes, so producers see an error
instead of old events silently disappearing), ``max_age`` 7 days, ``max_bytes`` 1 GiB and a
2-minute duplicate window for the ``Nats-Msg-Id`` header. An existing stream is left as it is;
:func:`stream_differences` says how it differs from what would be created. The bridge reads any
stream with the events' subjects as it is (upstream's ``NOETL_EVENTS``: limits retention, subjects
``noetl.events.<tenant>.<org>.<execution_id>.<shard>``, no ``Nats-Msg-Id``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from .errors import ConfigurationError, NatsUnavailable, ProjectorError, PublishRejected
from .redact import redact, remember
from .settings import Settings

__all__ = [
    "DEFAULT_DURABLE",
    "DEFAULT_NATS_URL",
    "DEFAULT_STREAM",
    "DEFAULT_SUBJECT_PREFIX",
    "MAX_TOKEN_LENGTH",
    "StreamLimits",
    "connect",
    "ensure_stream",
    "msg_id",
    "stream_differences",
    "subject_for",
    "subject_token",
    "translate_nats",
]

log = logging.getLogger(__name__)

# The Python API's defaults are the documented defaults of the settings (the command line reads
# the settings themselves, so the environment applies there; the API reads no environment).
_FIELDS = Settings.model_fields
DEFAULT_NATS_URL: str = _FIELDS["nats_url"].default
DEFAULT_STREAM: str = _FIELDS["nats_stream"].default
DEFAULT_SUBJECT_PREFIX: str = _FIELDS["nats_subject_prefix"].default
DEFAULT_DURABLE: str = _FIELDS["nats_durable"].default

#: Longest escaped execution id used verbatim in a subject; longer ones are hashed.
MAX_TOKEN_LENGTH = 128

_PLAIN = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset(".*>%")
# The same set as a pattern: ids made only of these pass through unchanged (the common case).
_PLAIN_ID = re.compile(
    r"[\x21-\x24\x26-\x29\x2B-\x2D\x2F-\x3D\x3F-\x7E]{1,%s}" % MAX_TOKEN_LENGTH  # noqa: UP031
)


def subject_token(execution_id: str) -> str:
    """The execution id as one NATS subject token (see the module docstring for the mapping)."""
    if _PLAIN_ID.fullmatch(execution_id):
        return execution_id
    out: list[str] = []
    for ch in execution_id:
        if ch in _PLAIN:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    token = "".join(out)
    if len(token) > MAX_TOKEN_LENGTH:
        return "%H" + hashlib.sha256(execution_id.encode("utf-8")).hexdigest()[:40]
    return token


def subject_for(execution_id: str, prefix: str = DEFAULT_SUBJECT_PREFIX) -> str:
    """The subject events of `execution_id` are published to: ``<prefix>.<subject_token>``."""
    return f"{prefix}.{subject_token(execution_id)}"


def msg_id(execution_id: str, event_id: str, payload: bytes) -> str:
    """The ``Nats-Msg-Id`` of an event: ``<execution id token>.<event id token>.<content hash>``.

    JetStream deduplicates by message id across the whole stream, while event ids are unique only
    within an execution (the table's key is the pair), so the id carries both; escaping keeps it
    injective and free of characters a header value cannot hold. The content hash (32 hex digits
    of the BLAKE2b-128 of the published `payload`) makes a re-publish of the same envelope a
    duplicate for the broker, while an id reused with other content passes the broker and is
    reported as a conflict by the bridge's sink.
    """
    digest = hashlib.blake2b(payload, digest_size=16).hexdigest()
    return f"{subject_token(execution_id)}.{subject_token(event_id)}.{digest}"


def check_prefix(prefix: str) -> str:
    """Validate a subject prefix (dot-separated tokens, no wildcards, no white space)."""
    if not prefix or any(not t or not set(t) <= _PLAIN for t in prefix.split(".")):
        raise ConfigurationError(
            f"subject prefix {prefix!r} must be dot-separated tokens of printable ASCII without "
            "white space, wildcards (* >) or % (for example noetl.events)"
        )
    return prefix


@dataclass(frozen=True)
class StreamLimits:
    """Limits a stream is created with (module docstring). ``max_bytes=-1`` means no limit."""

    max_age: float = 7 * 24 * 3600.0
    max_bytes: int = 1 << 30
    duplicate_window: float = 120.0
    #: Work-queue retention (only one consumer may read each subject) instead of limits.
    work_queue: bool = False

    def config(self, name: str, subjects: list[str]) -> api.StreamConfig:
        """The JetStream configuration for a stream `name` over `subjects`."""
        return api.StreamConfig(
            name=name,
            subjects=subjects,
            storage=api.StorageType.FILE,
            retention=(
                api.RetentionPolicy.WORK_QUEUE if self.work_queue else api.RetentionPolicy.LIMITS
            ),
            discard=api.DiscardPolicy.NEW,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window,
            num_replicas=1,
        )


async def ensure_stream(
    js: Any,
    stream: str = DEFAULT_STREAM,
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
    limits: StreamLimits | None = None,
) -> bool:
    """Create `stream` over ``<subject_prefix>.>`` unless it exists; True when it was created."""
    check_prefix(subject_prefix)
    try:
        await js.stream_info(stream)
        return False
    except nats.js.errors.NotFoundError:
        pass
    except Exception as exc:
        raise translate_nats(exc, f"looking up stream {stream!r}") from exc
    config = (limits or StreamLimits()).config(stream, [f"{subject_prefix}.>"])
    try:
        await js.add_stream(config)
    except Exception as exc:
        raise translate_nats(exc, f"creating stream {stream!r}") from exc
    log.info("created JetStream stream %s over %s.>", stream, subject_prefix)
    return True


def _seconds(value: float | None) -> str:
    return "none" if not value else f"{value:g} s"


async def stream_differences(
    js: Any,
    stream: str = DEFAULT_STREAM,
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
    limits: StreamLimits | None = None,
) -> list[str]:
    """How the existing `stream` differs from what :func:`ensure_stream` would create, one line
    per setting (``setting: stream has X, asked for Y``); empty when it matches."""
    try:
        info = await js.stream_info(stream)
    except Exception as exc:
        raise translate_nats(exc, f"looking up stream {stream!r}") from exc
    have = info.config
    want = (limits or StreamLimits()).config(stream, [f"{subject_prefix}.>"])
    shown = {
        "subjects": (sorted(have.subjects or []), sorted(want.subjects or [])),
        "retention": (_name(have.retention), _name(want.retention)),
        "storage": (_name(have.storage), _name(want.storage)),
        "discard": (_name(have.discard), _name(want.discard)),
        "max_age": (_seconds(have.max_age), _seconds(want.max_age)),
        "max_bytes": (have.max_bytes, want.max_bytes),
        "duplicate_window": (_seconds(have.duplicate_window), _seconds(want.duplicate_window)),
    }
    return [
        f"{name}: the stream has {found}, `nats init` would create {wanted}"
        for name, (found, wanted) in shown.items()
        if found != wanted
    ]


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))


async def require_stream(js: Any, stream: str) -> None:
    """Raise :class:`~projector.errors.StreamMissing` unless `stream` exists."""
    from .errors import StreamMissing

    try:
        await js.stream_info(stream)
    except nats.js.errors.NotFoundError as exc:
        raise StreamMissing(
            f"JetStream stream {stream!r} does not exist; create it with `projector nats init` "
            "(or NatsEventSink(..., create_stream=True))"
        ) from exc
    except Exception as exc:
        raise translate_nats(exc, f"looking up stream {stream!r}") from exc


async def _log_reconnected() -> None:
    log.info("NATS connection re-established")


#: The schemes nats-py connects with (it reads them in lower case only).
_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})
#: Where a list of server URLs is cut: a comma before the next URL's scheme (``nats://``,
#: ``tls://``, ``ws://``...), so that a comma inside a password stays in it.
_NEXT_SERVER = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def servers(url: str) -> list[str]:
    """The server URLs of `url`: one, or several separated by commas, each with its scheme
    (the nodes of a cluster, ``nats://a:4222,nats://b:4222``), as nats-py's ``servers=`` takes
    them: schemes in lower case, ``nats://`` before a server given without one. A comma not
    followed by a scheme belongs to the URL it is in (e.g. its password).

    Raises :class:`~projector.errors.ConfigurationError` for a scheme nats-py does not connect
    with (``http://``), or a list that mixes WebSocket and plain servers (it cannot), before any
    connection or name lookup; the message shows scheme, host and port, never credentials."""
    found = [part.strip() for part in _NEXT_SERVER.split(url.strip().rstrip(",")) if part.strip()]
    if not found:
        raise NatsUnavailable(f"no NATS server in {url!r}: give nats://HOST:PORT[,nats://...]")
    listed: list[str] = []
    for server in found:
        scheme, sep, rest = server.partition("://")
        if not sep:  # what nats-py reads it as (and redact() then knows its credentials)
            listed.append(f"nats://{server}")
            continue
        if scheme.lower() not in _SCHEMES:
            host = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
            shown = f"{scheme}://{host}"  # no user, token, password, path or query
            raise ConfigurationError(
                f"{shown!r} is not a NATS server URL: give nats://HOST:PORT "
                "(or tls://, ws://, wss://)"
            )
        listed.append(f"{scheme.lower()}://{rest}")
    websocket = {s.startswith(("ws://", "wss://")) for s in listed}
    if len(websocket) > 1:
        raise ConfigurationError(
            "a NATS URL list mixes WebSocket (ws://, wss://) and plain servers: nats-py connects "
            "to one kind; list servers of one kind"
        )
    return listed


async def connect(url: str, *, name: str, connect_timeout: float = 5.0) -> Any:
    """Connect to NATS (reconnecting forever after a first success); errors become ours.

    `url` may name several servers separated by commas: nats-py tries them in a random order
    for the first connection and moves to another one when a connection is lost.
    """
    client: list[Any] = []

    def why(exc: Exception) -> str:
        if isinstance(exc, TimeoutError):  # a port that is not a NATS server's, say
            return f"no answer within {connect_timeout:g} s"
        return str(exc) or type(exc).__name__

    listed = servers(url)  # a URL that is not NATS's: a usage error, before any connection
    # messages name the servers, never their credentials (a bare user:pw@host included)
    shown = redact(remember(",".join(listed)))
    first_errors: list[Exception] = []  # the first connection's tries, before it succeeded

    async def _log_error(exc: Exception) -> None:
        if client:
            log.warning("NATS: %s", exc)
        else:  # the failure names the last one; each try is progress (shown with -v)
            first_errors.append(exc)
            log.info("connecting to NATS at %s: %s", shown, why(exc))

    async def _log_disconnected() -> None:
        if client and not client[0].is_closed:  # closing on purpose also "disconnects"
            log.warning("NATS connection to %s lost; reconnecting", shown)

    try:
        nc = await nats.connect(
            servers=listed,
            name=name,
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            # nats-py's first connect honours the same limit as reconnects; -1 would retry an
            # unreachable server forever, so fail fast here and lift the limit once connected.
            max_reconnect_attempts=2,
            reconnect_time_wait=0.5,
            error_cb=_log_error,
            disconnected_cb=_log_disconnected,
            reconnected_cb=_log_reconnected,
        )
    except Exception as exc:
        # nats-py ends with "no servers available for connection"; the last try says why
        reason = why(first_errors[-1] if first_errors else exc)
        raise NatsUnavailable(
            f"could not connect to NATS at {shown}: {reason}; is "
            "nats-server running (with -js) and is --nats-url / PROJECTOR_NATS_URL right?"
        ) from exc
    nc.options["max_reconnect_attempts"] = -1  # from now on: reconnect forever
    client.append(nc)
    return nc


def translate_nats(exc: BaseException, doing: str) -> ProjectorError:
    """Map a nats-py error met while `doing` something to the project's error type."""
    if isinstance(exc, ProjectorError):
        return exc
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return PublishRejected(
            f"{doing}: no JetStream stream listens on the subject; create one with "
            "`projector nats init` (is JetStream enabled, nats-server -js?)"
        )
    if isinstance(exc, nats.js.errors.APIError):
        return PublishRejected(f"{doing}: JetStream refused: {exc.description} (code {exc.code})")
    if isinstance(exc, TimeoutError | nats.errors.Error | OSError):
        return NatsUnavailable(
            f"{doing}: NATS did not answer ({type(exc).__name__}: {exc}); it is safe to retry"
        )
    return ProjectorError(f"{doing}: {type(exc).__name__}: {exc}")
