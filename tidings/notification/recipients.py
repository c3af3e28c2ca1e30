"""Where a message may go: verified addresses, unless the request allows otherwise."""

from __future__ import annotations

import re

from tidings.notification.errors import RecipientError
from tidings.notification.requests import NotifyUser, Request

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def email_recipient(request: Request, user: NotifyUser) -> tuple[str, str]:
    """(address, display name). The verified address, or the last one when the
    request may go to an unverified address (e.g. VerifyEmail)."""
    address = user.last_email if request.unverified_channel else user.verified_email
    if not address:
        which = "email address" if request.unverified_channel else "verified email address"
        raise RecipientError(
            f"user {user.user_id} of instance {user.instance_id} has no {which} "
            f"for {request.message_type}",
            channel="email",
        )
    return address, user.display_name or " ".join(
        part for part in (user.first_name, user.last_name) if part
    )


def sms_recipient(request: Request, user: NotifyUser) -> str:
    """The E.164 number: verified, or the last one when the request allows it (VerifyPhone)."""
    number = user.last_phone if request.unverified_channel else user.verified_phone
    if not number:
        which = "phone number" if request.unverified_channel else "verified phone number"
        raise RecipientError(
            f"user {user.user_id} of instance {user.instance_id} has no {which} "
            f"for {request.message_type}",
            channel="sms",
        )
    compact = re.sub(r"[\s\-().]", "", number)
    if not _E164.match(compact):
        raise RecipientError(
            f"user {user.user_id}'s phone number is not in E.164 form (+<country><number>)",
            channel="sms",
        )
    return compact
