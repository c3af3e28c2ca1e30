"""From a request and its user to a message a channel can send."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

from tidings.notification.channels.base import EmailContent, OutgoingMessage, SMSContent
from tidings.notification.errors import CodeError, InAppRefused, RenderError
from tidings.notification.events import InAppContent
from tidings.notification.messages import CODE_MESSAGE_TYPES
from tidings.notification.recipients import email_recipient, sms_recipient
from tidings.notification.rendering import (
    INAPP_FIELDS,
    MESSAGE_FIELDS,
    Renderer,
    Scope,
    Source,
    choose_language,
    humanize,
)
from tidings.notification.requests import NotifyUser, Request

# The text fields each channel's message is made of (an email's layout gets
# every one of its fields); the others are not rendered.
EMAIL_FIELDS = frozenset(f for f in MESSAGE_FIELDS if f != "sms")
SMS_FIELDS = frozenset({"sms"})


class Decrypter(Protocol):
    def decrypt(self, value: Any) -> str: ...


class MessageComposer:
    """Renders one attempt of a notification: recipient, language, texts, layout.

    The code is decrypted here and only here, into the rendered content; it
    never goes anywhere else (logs, events, errors).
    """

    def __init__(
        self,
        *,
        renderer: Renderer,
        cipher: Decrypter | None,
        fallback_language: str,
        product_name: str,
    ) -> None:
        self._renderer = renderer
        self._cipher = cipher
        self._fallback = fallback_language
        self._product = product_name

    def compose(
        self,
        *,
        notification_id: str,
        instance_id: str,
        attempt: int,
        request: Request,
        user: NotifyUser,
    ) -> OutgoingMessage:
        """Raises RecipientError, CodeError, RenderError or InAppRefused (all permanent)."""
        if request.channel == "inapp":
            return self._compose_inapp(
                notification_id=notification_id,
                instance_id=instance_id,
                attempt=attempt,
                request=request,
                user=user,
            )
        if request.channel == "email":
            address, name = email_recipient(request, user)
        else:
            number = sms_recipient(request, user)
        lang, scopes, found = self._sources(instance_id, user, request.message_type)
        code = self._code(request)
        variables = self.variables(request, user, code=code, lang=lang)
        variables["url"] = (
            self._renderer.url(request.url_template, url_variables(request, user, code))
            if request.url_template
            else ""
        )
        texts = self._renderer.texts(
            instance_id=instance_id,
            lang=lang,
            message_type=request.message_type,
            variables=variables,
            only=EMAIL_FIELDS if request.channel == "email" else SMS_FIELDS,
            scopes=scopes,
            found=found,
        )
        content: EmailContent | SMSContent
        if request.channel == "email":
            layout = {**texts, "url": variables["url"], "product": self._product, "lang": lang}
            render = self._renderer.layout
            content = EmailContent(
                to_address=address,
                to_name=name,
                subject=texts["subject"],
                html=render(instance_id=instance_id, kind="html", variables=layout, scopes=scopes),
                text=render(instance_id=instance_id, kind="txt", variables=layout, scopes=scopes),
            )
        else:
            content = SMSContent(to_number=number, text=texts["sms"])
        self._check_size(texts, content, instance_id)
        return OutgoingMessage(
            notification_id=notification_id,
            instance_id=instance_id,
            attempt=attempt,
            message_type=request.message_type,
            content=content,
            sensitive=code_forms(code),
        )

    def _check_size(
        self, texts: dict[str, str], content: EmailContent | SMSContent, instance_id: str
    ) -> None:
        """The whole message within templates.max_message_bytes, or a RenderError."""
        parts = dict(texts)
        if isinstance(content, EmailContent):
            parts |= {"layout.html": content.html, "layout.txt": content.text}
        most = self._renderer.limits.max_message_bytes
        if sum(map(len, parts.values())) * 4 <= most:
            return  # UTF-8 takes at most 4 bytes a character: within, however it encodes
        sizes = {name: len(text.encode()) for name, text in parts.items()}
        total = sum(sizes.values())
        if total > most:
            largest = max(sizes, key=lambda name: sizes[name])
            raise RenderError(
                f"the message of instance {instance_id} renders to {total} bytes, over {most} "
                f"(templates.max_message_bytes); the largest part is {largest} "
                f"({sizes[largest]} bytes)",
                template=largest,
            )

    def _compose_inapp(
        self,
        *,
        notification_id: str,
        instance_id: str,
        attempt: int,
        request: Request,
        user: NotifyUser,
    ) -> OutgoingMessage:
        """The feed item: title, body and action URL in the user's language, and the data.

        Refused before anything is decrypted when the message carries a code.
        """
        refuse_codes_in_app(request.message_type, has_code=request.code is not None)
        lang, scopes, found = self._sources(instance_id, user, request.message_type)
        variables = self.variables(request, user, code="", lang=lang)
        variables["url"] = (
            self._renderer.url(request.url_template, url_variables(request, user, ""))
            if request.url_template
            else ""
        )
        texts = self._renderer.texts(
            instance_id=instance_id,
            lang=lang,
            message_type=request.message_type,
            variables=variables,
            fields=INAPP_FIELDS,
            scopes=scopes,
            found=found,
        )
        content = InAppContent(
            user_id=request.user_id,
            message_type=request.message_type,
            lang=lang,
            title=texts["inapp_title"],
            body=texts["inapp_body"],
            action_url=variables["url"],
            data=dict(request.args),
        )
        return OutgoingMessage(
            notification_id=notification_id,
            instance_id=instance_id,
            attempt=attempt,
            message_type=request.message_type,
            content=content,
        )

    def _sources(
        self, instance_id: str, user: NotifyUser, message_type: str
    ) -> tuple[str, list[Scope], dict[str, Source]]:
        """The language to write in, the instance's override folders (looked up once per
        message) and the texts of the message type in that language."""
        catalog = self._renderer.catalog
        scopes = catalog.scopes(instance_id)
        lang = choose_language(
            user.preferred_language, catalog.languages(instance_id, scopes=scopes), self._fallback
        )
        found = catalog.texts(instance_id, lang, message_type, scopes=scopes)
        if not found:
            lang = self._fallback  # a custom type written in fewer languages than the built-ins
            found = catalog.texts(instance_id, lang, message_type, scopes=scopes)
        return lang, scopes, found

    def variables(
        self, request: Request, user: NotifyUser, *, code: str, lang: str
    ) -> dict[str, Any]:
        """What texts may use: user, code, url, expiry, product, args, instance_id."""
        return {
            "user": user.model_dump(mode="json"),
            "code": code,
            "expiry": humanize(request.code_expiry, lang),
            "product": self._product,
            "args": dict(request.args),
            "instance_id": user.instance_id,
            "message_type": request.message_type,
            "url": "",
        }

    def _code(self, request: Request) -> str:
        if request.code is None:
            return ""
        if self._cipher is None:
            raise CodeError(
                "the request carries an encrypted code but no crypto.keys are configured "
                "(TIDINGS_CRYPTO_KEYS)"
            )
        return self._cipher.decrypt(request.code)


def refuse_codes_in_app(message_type: str, *, has_code: bool) -> None:
    """Raise InAppRefused when a message of this type (or with a code) would go in-app.

    One-time codes never go in-app: the API refuses such a request at the door
    with the same error the worker cancels it with.
    """
    if has_code or message_type in CODE_MESSAGE_TYPES:
        what = "carries a one-time code" if has_code else "is a one-time code message"
        raise InAppRefused(
            f"{message_type} {what} and may not go in-app: a feed keeps what it shows for "
            "months on every device the user is signed in to; send it by email or sms",
            channel="inapp",
            message_type=message_type,
        )


def code_forms(code: str) -> tuple[str, ...]:
    """The ways a code can appear in a message or a provider's echo of it."""
    if not code:
        return ()
    return tuple(dict.fromkeys((code, quote(code, safe=""), quote_plus(code))))


def url_variables(request: Request, user: NotifyUser, code: str) -> Mapping[str, Any]:
    """What a URL template may use, in Go style (`{{.Code}}`) and snake case (`{{ code }}`)."""
    values: dict[str, Any] = {
        "Code": code,
        "UserID": user.user_id,
        "OrgID": request.resource_owner,
        "Username": user.username,
        "LoginName": user.username,
        "PreferredLanguage": user.preferred_language,
        "SessionID": request.args.get("session_id", ""),
    }
    values.update({
        "code": code, "user_id": user.user_id, "org_id": request.resource_owner,
        "username": user.username, "session_id": request.args.get("session_id", ""),
        "args": dict(request.args),
    })  # fmt: skip
    return values
