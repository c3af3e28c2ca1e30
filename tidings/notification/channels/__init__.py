"""Channels: one interface (send a message, get the provider id back), many providers."""

from __future__ import annotations
