"""Writes examples/events.jsonl: sample user and session events whose codes are
encrypted with the demo key of examples/demo.yaml (run it after changing either)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tidings.config import CryptoSettings
from tidings.notification.codes import CodeCipher

HERE = Path(__file__).parent


def main() -> None:
    crypto = CryptoSettings(**yaml.safe_load((HERE / "demo.yaml").read_text())["crypto"])
    cipher = CodeCipher.from_settings(crypto)

    def code(plain: str) -> dict[str, str]:
        return cipher.encrypt(plain).model_dump()

    def user(
        instance: str, user_id: str, event_type: str, payload: dict[str, object]
    ) -> dict[str, object]:
        return {
            "instance_id": instance, "aggregate_type": "user", "aggregate_id": user_id,
            "event_type": event_type, "owner": f"org-{instance}", "creator": "demo",
            "payload": payload,
        }  # fmt: skip

    events = [
        user("acme", "user-ada", "user.human.added", {
            "username": "ada", "first_name": "Ada", "last_name": "Lovelace",
            "display_name": "Ada Lovelace", "email": "ada@example.com", "email_verified": True,
            "phone": "+41790000001", "phone_verified": True, "preferred_language": "en"}),
        user("acme", "user-ada", "user.human.password.code.added", {
            "code": code("RESET-4821"), "expiry": "10m", "code_returned": False,
            "notification_type": "email",
            "url_template": "https://login.acme.example/password/reset?user={{.UserID}}&code={{.Code}}"}),
        user("acme", "user-bob", "user.human.added", {
            "username": "bob", "first_name": "Bob", "last_name": "Builder",
            "display_name": "Bob Builder", "email": "bob@example.com", "email_verified": False,
            "phone": "+41790000002", "phone_verified": True, "preferred_language": "de"}),
        {"instance_id": "acme", "aggregate_type": "session", "aggregate_id": "session-1",
         "event_type": "session.otp.sms.challenged", "owner": "org-acme", "creator": "demo",
         "payload": {"user_id": "user-bob", "code": code("739104"), "expiry": "5m"}},
        user("globex", "user-cy", "user.human.added", {
            "username": "cy", "first_name": "Cy", "last_name": "Young", "display_name": "Cy Young",
            "email": "cy@globex.example", "email_verified": False, "phone": None,
            "phone_verified": False, "preferred_language": "en"}),
        user("globex", "user-cy", "user.human.email.code.added", {
            "code": code("VERIFY-55"), "expiry": "1h",
            "url_template": "https://globex.example/verify?code={{.Code}}"}),
    ]  # fmt: skip
    lines = [json.dumps(event, ensure_ascii=False) for event in events]
    (HERE / "events.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
