"""Errors of the audit itself (as opposed to what it finds in the log)."""

from __future__ import annotations

from tidings.errors import TidingsError


class AuditError(TidingsError):
    """The audit could not run to the end; nothing was changed, run it again."""
