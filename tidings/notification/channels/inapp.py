"""In-app: the user's feed is the provider.

Sending an in-app message hands its rendered item back to the worker, which
records it in notification.sent (`inapp`), in the same append as the outcome.
The feed read model (tidings.feeds, an inline projection of the log) shows the
item in that same transaction, and the serve processes push it to the user's
open connections from there. Nothing leaves the database, so a send cannot
fail transiently, and the log alone can rebuild every feed.
"""

from __future__ import annotations

from tidings.notification.channels.base import OutgoingMessage
from tidings.notification.errors import PermanentSendError
from tidings.notification.events import InAppContent


class InAppChannel:
    name = "inapp"

    async def send(self, message: OutgoingMessage) -> str:
        if not isinstance(message.content, InAppContent):
            raise PermanentSendError(
                f"the inapp channel got a {message.kind} message ({message.describe()}); "
                "only in-app requests go to the feed",
                channel=self.name,
            )
        return f"inapp-{message.notification_id}"

    async def close(self) -> None:
        return None
