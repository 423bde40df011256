"""Names shared by the writers and readers of noetl.event."""

from typing import Final

#: Channel of the payload-free NOTIFY the sink sends once per committed batch.
NOTIFY_CHANNEL: Final = "noetl_event"
