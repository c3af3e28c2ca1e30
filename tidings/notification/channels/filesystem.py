"""The default channel: each message becomes a file in an outbox folder.

Email is written as `.eml` (open it in any mail client), SMS as `.json`. A
re-send of the same attempt overwrites the same file, as a provider that
honours idempotency keys would.
"""

from __future__ import annotations

import asyncio
import json
import os
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from pathlib import Path

from tidings.notification.channels.base import EmailContent, OutgoingMessage, email_or_sms
from tidings.notification.errors import PermanentSendError, TransientSendError


class FilesystemChannel:
    name = "filesystem"

    def __init__(self, *, outbox: Path, from_address: str = "tidings@localhost") -> None:
        self.outbox = outbox
        self._from = from_address

    async def send(self, message: OutgoingMessage) -> str:
        folder = self.outbox / _safe(message.instance_id)
        content = email_or_sms(message, self.name)
        if isinstance(content, EmailContent):
            name = f"{message.idempotency_key}.eml"
            data = self._eml(message, content)
        else:
            name = f"{message.idempotency_key}.json"
            data = json.dumps(
                {
                    "notification_id": message.notification_id,
                    "instance_id": message.instance_id,
                    "attempt": message.attempt,
                    "message_type": message.message_type,
                    "to": content.to_number,
                    "text": content.text,
                },
                ensure_ascii=False,
                indent=2,
            ).encode()
        await asyncio.to_thread(_write_atomically, folder, name, data)
        return str(folder / name)

    def _eml(self, message: OutgoingMessage, content: EmailContent) -> bytes:
        mail = EmailMessage()
        mail["From"] = self._from
        mail["To"] = formataddr((content.to_name, content.to_address))
        mail["Subject"] = content.subject
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = f"<{message.idempotency_key}@tidings>"
        mail["X-Tidings-Notification"] = message.notification_id
        mail.set_content(content.text)
        mail.add_alternative(content.html, subtype="html")
        return mail.as_bytes()

    async def close(self) -> None:
        return None


def _safe(part: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in part)
    return cleaned.strip(".") or "_"


def _write_atomically(folder: Path, name: str, data: bytes) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)
    except (PermissionError, NotADirectoryError, FileExistsError) as exc:  # a setup problem
        raise PermanentSendError(
            f"cannot write into the outbox {folder}: {exc.strerror}; fix the folder or its "
            "permissions, or set channels.filesystem.outbox_dir",
            channel="filesystem",
        ) from exc
    except OSError as exc:  # a full disk may clear up
        raise TransientSendError(
            f"cannot write into the outbox {folder}: {exc.strerror}", channel="filesystem"
        ) from exc
