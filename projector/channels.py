"""Names shared by the writers and readers of noetl.event: the NOTIFY channel and the advisory
lock namespaces (the first key of PostgreSQL's two-key advisory locks)."""

from typing import Final

#: Channel of the payload-free NOTIFY the sink sends once per committed batch.
NOTIFY_CHANNEL: Final = "noetl_event"

#: The sink's locks ``(SINK_LOCK_CLASS, bucket)``, one per bucket of execution ids, taken by every
#: writer before it looks up stored keys.
SINK_LOCK_CLASS: Final = 0x6E6F  # "no"

#: The projector's lock ``(PROJECTOR_LOCK_CLASS, hashtext(projection name))``.
PROJECTOR_LOCK_CLASS: Final = 0x6E6F6574  # "noet"
