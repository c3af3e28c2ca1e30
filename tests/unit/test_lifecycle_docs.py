"""The docs name every status, cancel reason and attempt outcome the lifecycle knows."""

from __future__ import annotations

from pathlib import Path

from tidings.metrics import ATTEMPT_OUTCOMES, CANCEL_REASONS
from tidings.notification.lifecycle import CancelReason, Status

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_lifecycle_page_lists_every_status_and_reason() -> None:
    page = (DOCS / "lifecycle.md").read_text()
    for status in Status:
        assert f"| `{status.value}` |" in page, status
    for reason in CancelReason:
        assert f"| `{reason.value}` |" in page, reason


def test_the_metrics_reference_lists_every_reason_and_outcome() -> None:
    operations = (DOCS / "operations.md").read_text()
    (canceled,) = [
        line for line in operations.splitlines()
        if line.startswith("| `tidings_notifications_canceled_total`")
    ]  # fmt: skip
    (attempts,) = [
        line for line in operations.splitlines() if line.startswith("| `tidings_attempts_total`")
    ]
    assert set(CANCEL_REASONS) == {r.value for r in CancelReason}
    for reason in CANCEL_REASONS:
        assert f"`{reason}`" in canceled, reason
    for outcome in ATTEMPT_OUTCOMES:
        assert f"`{outcome}`" in attempts, outcome
