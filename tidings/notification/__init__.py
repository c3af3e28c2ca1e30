"""The notification domain: event models, requests, users, backoff, channels, texts."""

from __future__ import annotations
