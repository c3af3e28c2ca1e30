"""Requests and users for rendering tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tidings.notification.requests import NotifyUser, Request, SourceRef


def sample_user(**fields: Any) -> NotifyUser:
    base: dict[str, Any] = {
        "instance_id": "acme",
        "user_id": "user-ada",
        "resource_owner": "org-acme",
        "username": "ada",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "display_name": "Ada Lovelace",
        "preferred_language": "en",
        "last_email": "ada@example.com",
        "verified_email": "ada@example.com",
        "last_phone": "+41790000001",
        "verified_phone": "+41790000001",
    }
    base.update(fields)
    return NotifyUser(**base)


def sample_request(message_type: str = "PasswordReset", **fields: Any) -> Request:
    base: dict[str, Any] = {
        "user_id": "user-ada",
        "resource_owner": "org-acme",
        "source": SourceRef(
            aggregate_type="user",
            aggregate_id="user-ada",
            sequence=2,
            event_type="user.human.password.code.added",
            position=1,
            created_at=datetime.now(UTC),
        ),
        "message_type": message_type,
        "channel": "email",
        "sent_event_type": "user.human.password.code.sent",
        "url_template": "https://login.example.com/reset?user={{.UserID}}&code={{.Code}}",
        "code": None,
        "code_expiry": timedelta(minutes=10),
        "args": {"session_id": "session-1", "temporary_username": "ada-tmp"},
    }
    base.update(fields)
    return Request(**base)
