"""What the audit finds: violations by rule, what was checked, and what to do about each rule."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    name: str
    holds: str  # what the log must always satisfy
    advice: str  # what the operator does about a violation


_RULES = (
    Rule(
        "starts-with-requested",
        "every notification starts with notification.requested at sequence 1, and only there",
        "its request is missing or was not written by the projector, so no worker will pick "
        "it up; look at it with `tidings history ID`, and restore deleted events from a backup "
        "(never edit the log by hand)",
    ),
    Rule(
        "settled-once",
        "a notification has at most one notification.sent or notification.canceled, "
        "and nothing after it",
        "something appended around the expected-sequence guard (direct SQL, or a writer "
        "without expected sequence); the user may have had the message twice; find the writer "
        "by the events' creator: `tidings replay --aggregate-id ID --format jsonl`",
    ),
    Rule(
        "attempts",
        "attempts are numbered 1, 2, 3, ... (retry k, then the sent or canceled attempt "
        "after it) and never exceed notifications.max_attempts",
        "if notifications.max_attempts was lowered after these attempts, this is old history "
        "and needs nothing; otherwise the events were not written by the workers: look at "
        "`tidings history ID`",
    ),
    Rule(
        "marks",
        "a feed mark (notification.seen, read, unread, archived, unarchived) follows an "
        "in-app notification.sent, names the item's user, and changes the item",
        "the mark was not appended through the feed (which reads the item first and appends "
        "once, expecting its sequence); find the writer by its creator: "
        "`tidings replay --aggregate-id ID --format jsonl`; the feed model ignores marks "
        "without an item, so counts are unaffected",
    ),
    Rule(
        "sequence-gap",
        "every aggregate's sequences are 1, 2, 3, ... without gaps",
        "events were deleted from the log (appends never leave gaps); restore them from a "
        "backup, then rebuild the read models: `tidings projections rebuild users` and "
        "`tidings projections rebuild pending`",
    ),
    Rule(
        "position-reachable",
        "every event lies at a position the store has handed out (its writing transaction "
        "had started when the audit began)",
        "a row was written by hand (SQL) at a position beyond any the store hands out: the "
        "projector reads only finished positions, so it will not reach this event until the "
        "database's transaction ids catch up, and its lag cannot clear meanwhile; delete the "
        "row and append the event again with `tidings events append`",
    ),
    Rule(
        "source-exists",
        "a request's source event is in the log, in its instance, with the event type the "
        "request names",
        "the user or session event that asked for this message is gone or never existed "
        "(deleted, or the request was written by hand); restore it from a backup; the "
        "notification itself is unaffected",
    ),
    Rule(
        "source-sent",
        "a sent notification has its source aggregate's sent event (request.sent_event_type "
        "naming the notification)",
        "the message went out, but the sent event appended with it on the user or session is "
        "gone, so the platform cannot see it; restore it from a backup; do not resend",
    ),
    Rule(
        "pending-queue",
        "the pending queue equals the queue rebuilt from the log (leases aside)",
        "a missing row is never sent, an extra one may be sent again: rebuild with "
        "`tidings projections rebuild pending`, best with the workers stopped (the rebuild "
        "frees every lease, so messages in flight may go out twice)",
    ),
    Rule(
        "users-read-model",
        "the users read model equals a replay of the log up to the users checkpoint",
        "messages may go to stale addresses: rebuild with `tidings projections rebuild users` "
        "(the projector pauses meanwhile; readers switch to the new model when it commits)",
    ),
    Rule(
        "unreadable-payload",
        "every notification event's payload reads as its model (tidings.notification.events)",
        "the event was written by another tidings version or by hand; a request the workers "
        "cannot read is canceled (invalid_request); look at it with "
        "`tidings replay --aggregate-id ID --format jsonl`",
    ),
    Rule(
        "unknown-event-type",
        "a notification aggregate holds only notification.requested, .retry.requested, .sent, "
        ".canceled and the feed marks (.seen, .read, .unread, .archived, .unarchived)",
        "the event was not written by tidings; find the writer by its creator: "
        "`tidings replay --aggregate-id ID --format jsonl`",
    ),
)

RULES: dict[str, Rule] = {rule.name: rule for rule in _RULES}


@dataclass(frozen=True)
class Violation:
    """One thing the log does not satisfy, where it is, and what is wrong."""

    rule: str
    instance_id: str
    aggregate_type: str
    aggregate_id: str
    sequence: int | None
    position: int | None
    detail: str

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown audit rule {self.rule!r}")

    @property
    def aggregate(self) -> str:
        return f"{self.aggregate_type}/{self.aggregate_id}"


class ViolationLog:
    """Counts every violation, keeps the first `keep` of them (memory stays bounded)."""

    def __init__(self, *, keep: int) -> None:
        if keep < 0:
            raise ValueError("keep must be 0 or more")
        self._keep = keep
        self.kept: list[Violation] = []
        self.by_rule: Counter[str] = Counter()

    def add(self, violation: Violation) -> None:
        self.by_rule[violation.rule] += 1
        if len(self.kept) < self._keep:
            self.kept.append(violation)

    @property
    def count(self) -> int:
        return sum(self.by_rule.values())


@dataclass(frozen=True)
class AuditReport:
    """The outcome of `tidings audit verify`.

    `checked` says how much was looked at (events, aggregates, queue rows,
    users, ...); `violations` holds the first ones found, `violation_count`
    all of them.
    """

    checked: dict[str, int]
    violations: tuple[Violation, ...]
    violation_count: int
    by_rule: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    @property
    def truncated(self) -> bool:
        return self.violation_count > len(self.violations)

    def as_dict(self) -> dict[str, Any]:
        """One JSON document for machines."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "violation_count": self.violation_count,
            "violations_by_rule": self.by_rule,
            "violations_shown": len(self.violations),
            "truncated": self.truncated,
            "violations": [asdict(v) for v in self.violations],
            "advice": {name: RULES[name].advice for name in self.by_rule},
        }
