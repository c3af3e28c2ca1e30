"""The platform's user and session events that tidings reads (see docs/events.md).

Field names are part of the contract with the platform. Unknown extra fields
are ignored, so the platform may add fields without breaking tidings; a
missing or mistyped field makes the event invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tidings.notification.messages import Channel, MessageType
from tidings.notification.wire import Duration


class SourcePayload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


# --- user aggregate: what the users read model keeps -------------------------------


class HumanAdded(SourcePayload):
    username: str
    first_name: str = ""
    last_name: str = ""
    display_name: str = ""
    email: str | None = None
    email_verified: bool = False
    phone: str | None = None
    phone_verified: bool = False
    preferred_language: str = ""


class ProfileChanged(SourcePayload):
    first_name: str | None = None
    last_name: str | None = None
    display_name: str | None = None
    preferred_language: str | None = None


class EmailChanged(SourcePayload):
    email: str = Field(min_length=1)


class PhoneChanged(SourcePayload):
    phone: str = Field(min_length=1)


class UsernameChanged(SourcePayload):
    username: str = Field(min_length=1)


class NoFields(SourcePayload):
    """Events whose type says it all (email verified, user removed, ...)."""


# --- events that ask for a message -------------------------------------------------


class CodeAdded(SourcePayload):
    """A one-time code was created; `code` arrives encrypted and stays so."""

    code: dict[str, Any] | str
    expiry: Duration | None = None
    url_template: str | None = None
    code_returned: bool = False


class PasswordCodeAdded(CodeAdded):
    notification_type: Literal["email", "sms"] = "email"


class DomainClaimed(SourcePayload):
    """The user's login domain was claimed by another organisation."""

    username: str = Field(min_length=1)
    url_template: str | None = None


class PasswordChanged(SourcePayload):
    """The password changed; a message only when notify_on_password_change is on."""


class SessionOTPChallenged(CodeAdded):
    user_id: str = Field(min_length=1)


USER_EVENTS: dict[str, type[SourcePayload]] = {
    "user.human.added": HumanAdded,
    "user.human.profile.changed": ProfileChanged,
    "user.human.email.changed": EmailChanged,
    "user.human.email.verified": NoFields,
    "user.human.phone.changed": PhoneChanged,
    "user.human.phone.verified": NoFields,
    "user.human.phone.removed": NoFields,
    "user.username.changed": UsernameChanged,
    "user.domain.claimed": DomainClaimed,
    "user.removed": NoFields,
}


@dataclass(frozen=True)
class MessageSource:
    """How one source event becomes a notification request."""

    event_type: str
    payload: type[SourcePayload]
    message_type: MessageType
    channel: Channel | None  # None: the payload's notification_type decides
    sent_event_type: str  # appended on the source aggregate once the message went out
    unverified_channel: bool = False  # may go to an address not verified yet
    is_otp: bool = False
    setting: str | None = None  # a notifications.<setting> that must be on

    @property
    def aggregate_type(self) -> str:
        """The aggregate the source event must be on: user or session."""
        return self.event_type.split(".", 1)[0]


MESSAGE_SOURCES: dict[str, MessageSource] = {
    source.event_type: source
    for source in (
        MessageSource("user.human.initialization.code.added", CodeAdded, "InitCode", "email",
                      "user.human.initialization.code.sent", unverified_channel=True),
        MessageSource("user.human.email.code.added", CodeAdded, "VerifyEmail", "email",
                      "user.human.email.code.sent", unverified_channel=True),
        MessageSource("user.human.password.code.added", PasswordCodeAdded, "PasswordReset", None,
                      "user.human.password.code.sent"),
        MessageSource("user.human.phone.code.added", CodeAdded, "VerifyPhone", "sms",
                      "user.human.phone.code.sent", unverified_channel=True),
        MessageSource("user.human.passwordless.initialization.code.requested", CodeAdded,
                      "PasswordlessRegistration", "email",
                      "user.human.passwordless.initialization.code.sent"),
        MessageSource("user.human.invite.code.added", CodeAdded, "InviteUser", "email",
                      "user.human.invite.code.sent", unverified_channel=True),
        MessageSource("user.human.otp.sms.code.added", CodeAdded, "VerifySMSOTP", "sms",
                      "user.human.otp.sms.code.sent", is_otp=True),
        MessageSource("user.human.otp.email.code.added", CodeAdded, "VerifyEmailOTP", "email",
                      "user.human.otp.email.code.sent", is_otp=True),
        MessageSource("user.domain.claimed", DomainClaimed, "DomainClaimed", "email",
                      "user.domain.claimed.sent"),
        MessageSource("user.human.password.changed", PasswordChanged, "PasswordChange", "email",
                      "user.human.password.change.sent", setting="notify_on_password_change"),
        MessageSource("session.otp.sms.challenged", SessionOTPChallenged, "VerifySMSOTP", "sms",
                      "session.otp.sms.sent", is_otp=True),
        MessageSource("session.otp.email.challenged", SessionOTPChallenged, "VerifyEmailOTP",
                      "email", "session.otp.email.sent", is_otp=True),
    )
}  # fmt: skip
