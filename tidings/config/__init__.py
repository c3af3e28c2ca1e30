"""Settings: packaged defaults.yaml, then a user file, then TIDINGS_* variables."""

from __future__ import annotations

from tidings.config.settings import (
    APISettings,
    ChannelChoice,
    ChannelSettings,
    CryptoSettings,
    DatabaseSettings,
    EndUserInstanceSettings,
    EndUserSettings,
    EventSettings,
    FilesystemChannelSettings,
    InAppSettings,
    NotificationSettings,
    OperationsSettings,
    ProjectionSettings,
    Settings,
    SMTPChannelSettings,
    TemplateSettings,
    TwilioChannelSettings,
    WebhookChannelSettings,
    load_settings,
)

__all__ = [
    "APISettings",
    "ChannelChoice",
    "ChannelSettings",
    "CryptoSettings",
    "DatabaseSettings",
    "EndUserInstanceSettings",
    "EndUserSettings",
    "EventSettings",
    "FilesystemChannelSettings",
    "InAppSettings",
    "NotificationSettings",
    "OperationsSettings",
    "ProjectionSettings",
    "SMTPChannelSettings",
    "Settings",
    "TemplateSettings",
    "TwilioChannelSettings",
    "WebhookChannelSettings",
    "load_settings",
]
