"""The kinds of message tidings sends and the channels they travel on."""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import StringConstraints

MessageType = Literal[
    "InitCode",
    "VerifyEmail",
    "PasswordReset",
    "VerifyPhone",
    "PasswordlessRegistration",
    "InviteUser",
    "VerifySMSOTP",
    "VerifyEmailOTP",
    "DomainClaimed",
    "PasswordChange",
]
MESSAGE_TYPES: tuple[str, ...] = get_args(MessageType)

# Message types whose texts carry a one-time code (or a link holding one):
# they never go in-app, where a feed keeps them for months and shows them on
# every device the user is signed in to.
CODE_MESSAGE_TYPES = frozenset({
    "InitCode", "VerifyEmail", "PasswordReset", "VerifyPhone", "PasswordlessRegistration",
    "InviteUser", "VerifySMSOTP", "VerifyEmailOTP",
})  # fmt: skip

Channel = Literal["email", "sms", "inapp"]

MESSAGE_TYPE_PATTERN = r"^[A-Z][A-Za-z0-9]{0,63}$"
MessageTypeName = Annotated[str, StringConstraints(pattern=MESSAGE_TYPE_PATTERN)]
"""A custom message type (e.g. ExportReady): texts for it come from the template overrides."""


def is_message_type_name(value: str) -> bool:
    return re.fullmatch(MESSAGE_TYPE_PATTERN, value) is not None
