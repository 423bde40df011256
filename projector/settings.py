"""Every ``PROJECTOR_*`` environment variable, in one place, with its documented default.

The command line reads its defaults from here (an option given on the command line wins); the
Python API takes its settings as arguments and reads nothing from the environment except through
:func:`settings`. ``PROJECTOR_TEST_*`` variables belong to the test suite and are not read here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigurationError

__all__ = ["Settings", "settings"]


class Settings(BaseSettings):
    """Environment settings (prefix ``PROJECTOR_``); command-line options override them."""

    model_config = SettingsConfigDict(env_prefix="PROJECTOR_", extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL. Unset: the command line starts an embedded PostgreSQL.",
    )
    embedded_dir: str | None = Field(
        default=None,
        description="Data directory of the embedded PostgreSQL (default: the user data directory).",
    )
    connect_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds to wait for a PostgreSQL connection before giving up (libpq counts "
        "whole seconds, at least 2; a connect_timeout in the URL wins).",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines on stderr: text, or json (one JSON object a line).",
    )
    metrics_address: str | None = Field(
        default=None,
        description="HOST:PORT where `project` and `consume` serve /metrics, /healthz and "
        "/readyz (unset: no server; port 0: a free port).",
    )
    ready_max_lag: float = Field(
        default=300.0,
        gt=0,
        description="Seconds of lag beyond which /readyz answers 503.",
    )
    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        description="NATS server URL; several separated by commas (a cluster's nodes).",
    )
    nats_stream: str = Field(default="NOETL_EVENTS", description="JetStream stream of events.")
    nats_subject_prefix: str = Field(
        default="noetl.events",
        description="Events are published to <prefix>.<execution id token>.",
    )
    nats_durable: str = Field(
        default="projector", description="Durable consumer shared by every `projector consume`."
    )


def settings() -> Settings:
    """The settings as the environment has them now (read afresh on every call).

    A malformed value raises :class:`~projector.errors.ConfigurationError` naming the variable.
    """
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"PROJECTOR_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ConfigurationError(f"bad environment setting: {problems}") from None
