"""Where a message may go: verified addresses, unless the request allows otherwise."""

from __future__ import annotations

import re

from tidings.notification.errors import RecipientError
from tidings.notification.requests import NotifyUser, Request

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def email_recipient(request: Request, user: NotifyUser) -> tuple[str, str]:
    """(address, display name). The verified address, or the last one when the
    request may go to an unverified address (e.g. VerifyEmail)."""
    address = _chosen(request, user, user.last_email, user.verified_email, "email", "email address")
    return address, user.display_name or " ".join(
        part for part in (user.first_name, user.last_name) if part
    )


def sms_recipient(request: Request, user: NotifyUser) -> str:
    """The E.164 number: verified, or the last one when the request allows it (VerifyPhone)."""
    number = _chosen(request, user, user.last_phone, user.verified_phone, "sms", "phone number")
    compact = re.sub(r"[\s\-().]", "", number)
    if not _E164.match(compact):
        raise RecipientError(
            f"user {user.user_id}'s phone number is not in E.164 form (+<country><number>)",
            channel="sms",
        )
    return compact


def _chosen(
    request: Request,
    user: NotifyUser,
    last: str | None,
    verified: str | None,
    channel: str,
    what: str,
) -> str:
    """The last address where the request allows an unverified one, else the verified one."""
    chosen = last if request.unverified_channel else verified
    if not chosen:
        which = what if request.unverified_channel else f"verified {what}"
        raise RecipientError(
            f"user {user.user_id} of instance {user.instance_id} has no {which} "
            f"for {request.message_type}",
            channel=channel,
        )
    return chosen
