"""Which channel sends which kind of message, per instance, built once and reused."""

from __future__ import annotations

from pathlib import Path

from tidings.config import ChannelSettings
from tidings.notification.channels.base import Channel
from tidings.notification.channels.filesystem import FilesystemChannel
from tidings.notification.channels.log import LogChannel
from tidings.notification.messages import Channel as ChannelKind


class ChannelRegistry:
    def __init__(self, *, settings: ChannelSettings, data_folder: Path) -> None:
        self._settings = settings
        self._data_folder = data_folder
        self._built: dict[str, Channel] = {}

    def name_for(self, instance_id: str, kind: ChannelKind) -> str:
        if kind == "inapp":  # the feed is the only way in-app
            return "inapp"
        email, sms = self._settings.for_instance(instance_id)
        return email if kind == "email" else sms

    def channel_for(self, instance_id: str, kind: ChannelKind) -> Channel:
        """The channel that sends `kind` messages for this instance."""
        name = self.name_for(instance_id, kind)
        channel = self._built.get(name)
        if channel is None:
            channel = self._built[name] = self._build(name)
        return channel

    def _build(self, name: str) -> Channel:
        settings = self._settings
        if name == "filesystem":
            return FilesystemChannel(outbox=settings.filesystem.outbox(self._data_folder))
        if name == "log":
            return LogChannel()
        if name == "inapp":
            from tidings.notification.channels.inapp import InAppChannel

            return InAppChannel()
        if name == "smtp":
            from tidings.notification.channels.smtp import SMTPChannel

            return SMTPChannel(settings=settings.smtp)
        if name == "twilio":
            from tidings.notification.channels.twilio import TwilioChannel

            return TwilioChannel(settings=settings.twilio)
        if name == "webhook":
            from tidings.notification.channels.webhook import WebhookChannel

            return WebhookChannel(settings=settings.webhook)
        raise ValueError(f"unknown channel {name!r}")  # settings only allow the names above

    async def close(self) -> None:
        built, self._built = self._built, {}
        for channel in built.values():
            await channel.close()
