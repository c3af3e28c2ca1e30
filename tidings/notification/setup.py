"""Building the notification side from settings: composer and channels."""

from __future__ import annotations

from tidings.config import Settings
from tidings.notification.channels.registry import ChannelRegistry
from tidings.notification.codes import CodeCipher
from tidings.notification.compose import Decrypter, MessageComposer
from tidings.notification.rendering import Renderer, RenderLimits, TextCatalog


def build_composer(settings: Settings, *, cipher: Decrypter | None = None) -> MessageComposer:
    """The composer for these settings; the cipher comes from crypto.keys unless given."""
    if cipher is None and settings.crypto.keys:
        cipher = CodeCipher.from_settings(settings.crypto)
    return MessageComposer(
        renderer=Renderer(
            catalog=TextCatalog(override_dir=settings.templates.dir),
            limits=RenderLimits(
                max_field_bytes=settings.templates.max_field_bytes,
                max_message_bytes=settings.templates.max_message_bytes,
                seconds=settings.templates.render_timeout.total_seconds(),
                url_schemes=tuple(s.lower() for s in settings.templates.allowed_url_schemes),
            ),
        ),
        cipher=cipher,
        fallback_language=settings.templates.fallback_language,
        product_name=settings.templates.product_name,
    )


def build_channels(settings: Settings) -> ChannelRegistry:
    return ChannelRegistry(settings=settings.channels, data_folder=settings.database.data_folder())
