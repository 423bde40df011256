"""Settings read from the environment (prefix ``PROJECTOR_``), with documented defaults."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Environment settings; command-line options override them."""

    model_config = SettingsConfigDict(env_prefix="PROJECTOR_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL. Unset: the command line starts an embedded PostgreSQL.",
    )
    embedded_dir: str | None = Field(
        default=None,
        description="Data directory of the embedded PostgreSQL (default: the user data directory).",
    )
