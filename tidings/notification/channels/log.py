"""For development: a one-line summary per message in the log, never its content."""

from __future__ import annotations

import logging

from tidings.notification.channels.base import EmailContent, OutgoingMessage, email_or_sms

log = logging.getLogger("tidings.channels.log")


class LogChannel:
    name = "log"

    async def send(self, message: OutgoingMessage) -> str:
        content = email_or_sms(message, self.name)
        if isinstance(content, EmailContent):
            to = _mask_address(content.to_address)
        else:
            to = _mask_number(content.to_number)
        log.info("log channel: %s to %s (content not logged)", message.describe(), to)
        return f"log-{message.idempotency_key}"

    async def close(self) -> None:
        return None


def _mask_address(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


def _mask_number(number: str) -> str:
    return number[:3] + "*" * max(len(number) - 5, 0) + number[-2:]
