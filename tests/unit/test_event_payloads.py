"""Payloads built without a pydantic round trip are what the models write."""

from __future__ import annotations

from typing import Any

import pytest

from tidings.notification.events import InAppContent, Sent, SourceSent


def test_a_sent_payload_is_the_models_less_an_absent_inapp() -> None:
    # payload() writes these fields by hand: a field added to Sent goes there too.
    assert set(Sent.model_fields) == {"channel", "provider_message_id", "attempt", "inapp"}
    sent = Sent(channel="smtp", provider_message_id="<m-1@x>", attempt=3)
    assert sent.payload() == sent.model_dump(mode="json", exclude={"inapp"})
    item = InAppContent(user_id="u", message_type="ExportReady", lang="en", title="t", body="b")
    in_app = Sent(channel="inapp", provider_message_id="i-1", attempt=1, inapp=item)
    assert in_app.payload() == in_app.model_dump(mode="json")
    assert in_app.payload()["inapp"]["title"] == "t"


@pytest.mark.parametrize(
    "fields",
    [
        {"notification_id": "n-1", "message_type": "PasswordReset", "channel": "smtp"},
        {"notification_id": "n-1", "message_type": "PasswordReset", "channel": 7},  # not text
    ],
)
def test_a_source_sent_payload_is_the_models(fields: dict[str, Any]) -> None:
    assert set(SourceSent.model_fields) == {"notification_id", "message_type", "channel"}
    if isinstance(fields["channel"], str):
        assert SourceSent.payload_of(**fields) == SourceSent(**fields).model_dump(mode="json")
        return
    with pytest.raises(ValueError, match="channel"):  # refused as the model refuses it
        SourceSent.payload_of(**fields)
