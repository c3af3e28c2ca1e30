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

# Message types whose texts carry a one-time code (or a link holding one):
# they never go in-app, where a feed keeps them for months and shows them on
# every device the user is signed in to.
CODE_MESSAGE_TYPES = frozenset({
    "InitCode", "VerifyEmail", "PasswordReset", "VerifyPhone", "PasswordlessRegistration",
    "InviteUser", "VerifySMSOTP", "VerifyEmailOTP",
})  # fmt: skip

Channel = Literal["email", "sms", "inapp"]
