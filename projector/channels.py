"""Names of the PostgreSQL NOTIFY channels the sink and the projector share."""

from __future__ import annotations

from typing import Final

#: The sink sends a payload-free NOTIFY on this channel once per committed batch; the projector
#: LISTENs on it to wake up (and polls as a fallback).
NOTIFY_CHANNEL: Final = "noetl_event"
