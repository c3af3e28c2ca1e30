"""The kinds of message tidings sends and the channels they travel on."""

from __future__ import annotations

from typing import Literal, get_args

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

Channel = Literal["email", "sms"]
