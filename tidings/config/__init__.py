"""Settings: packaged defaults.yaml, then a user file, then TIDINGS_* variables."""

from __future__ import annotations

from tidings.config.settings import (
    DatabaseSettings,
    NotificationSettings,
    ProjectionSettings,
    Settings,
    load_settings,
)

__all__ = [
    "DatabaseSettings",
    "NotificationSettings",
    "ProjectionSettings",
    "Settings",
    "load_settings",
]
