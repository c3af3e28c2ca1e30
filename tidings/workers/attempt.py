"""One attempt at one notification: decide, render, send, record the outcome.

The send happens outside any database transaction. The outcome is one append
that expects the sequence the notification had when it was claimed: if its
lease ran out and another worker settled or rescheduled it meanwhile, that
append is refused, so a notification is never settled twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from pydantic import ValidationError

from tidings.clock import Clock
from tidings.config import NotificationSettings
from tidings.config.durations import format_duration, parse_duration
from tidings.eventstore import ConcurrencyError, DatabaseUnavailable, EventStore, NewEvent
from tidings.metrics import Metrics
from tidings.notification.backoff import Backoff
from tidings.notification.channels.base import OutgoingMessage
from tidings.notification.channels.registry import ChannelRegistry
from tidings.notification.compose import MessageComposer
from tidings.notification.errors import PermanentSendError, SendError, TransientSendError
from tidings.notification.events import (
    CANCELED,
    RETRY_REQUESTED,
    SENT,
    Canceled,
    CancelReason,
    InAppContent,
    RetryRequested,
    Sent,
    SourceSent,
)
from tidings.notification.requests import NOTIFICATION_AGGREGATE, NotifyUser, Request
from tidings.workers.queue import Claimed

log = logging.getLogger("tidings.workers")

# Many users at once, by (instance id, user id); unknown ones are left out.
UserLookup = Callable[[list[tuple[str, str]]], Awaitable[dict[tuple[str, str], NotifyUser]]]
Result = Literal["sent", "retry", "canceled", "refused", "unrecorded"]
CREATOR = "tidings-worker"


@dataclass(frozen=True)
class Outcome:
    result: Result
    reason: str | None = None


@dataclass
class _Decided:
    """An attempt that has happened, with the events that will record it."""

    claimed: Claimed
    events: list[NewEvent]
    outcome: Outcome
    channel: str | None
    started: float


# Outcomes of this many notifications go into one append (well below the
# 65,536 events a transaction may append).
_RECORD_CHUNK = 500


class AttemptRunner:
    def __init__(
        self,
        *,
        store: EventStore,
        composer: MessageComposer,
        channels: ChannelRegistry,
        users: UserLookup,
        settings: NotificationSettings,
        backoff: Backoff,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._composer = composer
        self._channels = channels
        self._users = users
        self._settings = settings
        self._backoff = backoff
        self._clock = clock
        self._metrics = metrics

    async def run(self, claimed: Claimed) -> Outcome:
        """Attempt one notification (see run_bulk)."""
        return (await self.run_bulk([claimed]))[0]

    async def run_bulk(self, bulk: list[Claimed]) -> list[Outcome]:
        """Attempt a claimed bulk concurrently, then record every outcome.

        Never raises: every way an attempt can end is an outcome, logged. The
        users are read in one query and the outcomes appended together (one
        commit per bulk); a refused late outcome is taken out and the rest
        appended again.
        """
        try:
            users = await self._users(sorted({_user_key(c) for c in bulk}))
        except DatabaseUnavailable as exc:
            log.warning(
                "cannot read the users of a bulk of %d (%s); they will be claimed again "
                "when their lease runs out", len(bulk), exc,
            )  # fmt: skip
            outcomes = [Outcome("unrecorded", "database unavailable") for _ in bulk]
            if self._metrics is not None:
                for claimed in bulk:
                    self._metrics.attempt("unrecorded", None, _message_type(claimed))
            return outcomes
        decided = await asyncio.gather(*(self._decide(c, users) for c in bulk))
        recorded = await self._record(list(decided))
        for d in decided:
            outcome = recorded[id(d)]
            self._log(d, outcome, time.monotonic() - d.started)
            if self._metrics is not None:
                self._count(d, outcome, self._metrics)
        return [recorded[id(d)] for d in decided]

    def _count(self, decided: _Decided, outcome: Outcome, metrics: Metrics) -> None:
        metrics.attempt(outcome.result, decided.channel, _message_type(decided.claimed))
        if outcome.result == "canceled" and outcome.reason:
            metrics.cancel(outcome.reason)

    async def _decide(self, claimed: Claimed, users: dict[tuple[str, str], NotifyUser]) -> _Decided:
        started = time.monotonic()
        try:
            events, outcome, channel = await self._attempt(claimed, users)
        except Exception as exc:  # a bug must cost one notification at most, never the pool
            log.exception(
                "attempt %s of notification %s (instance %s) failed unexpectedly",
                claimed.attempt, claimed.notification_id, claimed.instance_id,
                extra={
                    "instance_id": claimed.instance_id,
                    "notification_id": claimed.notification_id,
                    "attempt": claimed.attempt,
                },
            )  # fmt: skip
            events, outcome, channel = self._retry_or_cancel(
                claimed, None, None, f"internal error: {type(exc).__name__}: {exc}", None
            )
        return _Decided(claimed, events, outcome, channel, started)

    async def _attempt(
        self, claimed: Claimed, users: dict[tuple[str, str], NotifyUser]
    ) -> tuple[list[NewEvent], Outcome, str | None]:
        now = self._clock()
        if now > claimed.requested_at + self._settings.max_ttl:
            return self._cancel(
                claimed, "expired",
                f"not sent within max_ttl ({format_duration(self._settings.max_ttl)}) "
                f"of its request at {claimed.requested_at.isoformat()}",
                attempts=claimed.attempts,
            ), Outcome("canceled", "expired"), None  # fmt: skip
        try:
            request = Request.model_validate(claimed.request)
            snapshot = (
                NotifyUser.model_validate(claimed.notify_user) if claimed.notify_user else None
            )
        except ValidationError as exc:
            reason = f"the request in the log cannot be read: {_first_error(exc)}"
            return (
                self._cancel(claimed, "invalid_request", reason, attempts=claimed.attempts),
                Outcome("canceled", "invalid_request"),
                None,
            )
        current = users.get((claimed.instance_id, request.user_id))
        if current is None and snapshot is None:
            reason = f"user {request.user_id} is not in the users read model"
            return self._user_gone(claimed, reason)
        if current is not None and current.state == "removed":
            return self._user_gone(claimed, f"user {request.user_id} was removed")
        # The first attempt snapshots the user; retries render from that snapshot.
        user = snapshot if snapshot is not None else current
        assert user is not None
        channel_name = self._channels.name_for(claimed.instance_id, request.channel)
        message: OutgoingMessage | None = None
        try:
            message = self._composer.compose(
                notification_id=claimed.notification_id,
                instance_id=claimed.instance_id,
                attempt=claimed.attempt,
                request=request,
                user=user,
            )
            channel = self._channels.channel_for(claimed.instance_id, request.channel)
            sending = time.monotonic()
            try:
                async with asyncio.timeout(self._send_timeout()):
                    provider_id = await channel.send(message)
            finally:
                if self._metrics is not None:
                    self._metrics.sent_in(channel_name, time.monotonic() - sending)
        except PermanentSendError as exc:
            # A provider may quote the request, code included, in its error:
            # the error goes into the log, the code never does.
            error = message.scrub(str(exc)) if message else str(exc)
            return (
                self._cancel(claimed, "permanent_error", error, attempts=claimed.attempt),
                Outcome("canceled", "permanent_error"),
                channel_name,
            )
        except TransientSendError as exc:
            error = message.scrub(str(exc)) if message else str(exc)
            return (*self._retry_or_cancel(claimed, request, user, error, exc)[:2], channel_name)
        except TimeoutError:
            error = f"the {channel_name} channel did not answer within {self._send_timeout():g}s"
            return (*self._retry_or_cancel(claimed, request, user, error, None)[:2], channel_name)
        inapp = message.content if isinstance(message.content, InAppContent) else None
        return (
            sent_events(claimed, request, channel_name, provider_id, inapp=inapp),
            Outcome("sent"),
            channel_name,
        )

    def _send_timeout(self) -> float:
        # Well inside the lease, so a hung provider cannot outlive it and invite
        # a second worker to send the same attempt.
        return max(self._settings.transaction_duration.total_seconds() / 2, 0.1)

    def _user_gone(self, claimed: Claimed, reason: str) -> tuple[list[NewEvent], Outcome, None]:
        return (
            self._cancel(claimed, "user_removed", reason, attempts=claimed.attempts),
            Outcome("canceled", "user_removed"),
            None,
        )

    def _retry_or_cancel(
        self,
        claimed: Claimed,
        request: Request | None,
        user: NotifyUser | None,
        error: str,
        exc: SendError | None,
    ) -> tuple[list[NewEvent], Outcome, None]:
        attempt = claimed.attempt
        if request is None or user is None:  # nothing to retry with
            return (
                self._cancel(claimed, "permanent_error", error, attempts=attempt),
                Outcome("canceled", "permanent_error"),
                None,
            )
        if attempt >= self._settings.max_attempts:
            reason = f"attempt {attempt} of {self._settings.max_attempts} failed: {error}"
            return (
                self._cancel(claimed, "max_attempts", reason, attempts=attempt),
                Outcome("canceled", "max_attempts"),
                None,
            )
        now = self._clock()
        previous = parse_duration(claimed.backoff) if claimed.backoff else None
        backoff = self._backoff.next(previous)
        due = now + backoff
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            due = max(due, now + timedelta(seconds=retry_after))
        retry = RetryRequested(
            request=request, notify_user=user, backoff=backoff, attempt=attempt,
            error=error, due_at=due,
        )  # fmt: skip
        return (
            [self._event(claimed, RETRY_REQUESTED, retry.model_dump(mode="json"))],
            Outcome("retry", f"due {due.isoformat()}"),
            None,
        )

    def _cancel(
        self, claimed: Claimed, reason: CancelReason, error: str, *, attempts: int
    ) -> list[NewEvent]:
        canceled = Canceled(reason=reason, error=error, attempt=attempts)
        return [self._event(claimed, CANCELED, canceled.model_dump(mode="json"))]

    def _event(self, claimed: Claimed, event_type: str, payload: dict[str, object]) -> NewEvent:
        return notification_event(claimed, event_type, payload)

    async def _record(self, decided: list[_Decided]) -> dict[int, Outcome]:
        """Append the outcomes, a chunk at a time; the result by id() of each decision."""
        results: dict[int, Outcome] = {}
        for start in range(0, len(decided), _RECORD_CHUNK):
            results.update(await self._record_chunk(decided[start : start + _RECORD_CHUNK]))
        return results

    async def _record_chunk(self, chunk: list[_Decided]) -> dict[int, Outcome]:
        results: dict[int, Outcome] = {}
        waiting = [d for d in chunk if d.events]
        waits = iter((0.1, 0.5, 2.0))
        while waiting:
            events = [e for d in waiting for e in d.events]
            owners = [d for d in waiting for _ in d.events]
            try:
                await self._store.append(events)
            except ConcurrencyError as exc:
                late = owners[exc.index] if exc.index is not None else waiting[0]
                log.warning(
                    "late outcome refused: notification %s (instance %s) attempt %s was "
                    "settled or rescheduled by another worker after this one's lease ran out "
                    "(%s); its %s is not recorded",
                    late.claimed.notification_id, late.claimed.instance_id,
                    late.claimed.attempt, exc, late.outcome.result,
                    extra={
                        "instance_id": late.claimed.instance_id,
                        "notification_id": late.claimed.notification_id,
                        "attempt": late.claimed.attempt,
                        "refused_outcome": late.outcome.result,
                    },
                )  # fmt: skip
                results[id(late)] = Outcome("refused", late.outcome.result)
                waiting.remove(late)
                continue
            except DatabaseUnavailable as exc:
                wait = next(waits, None)
                if wait is not None:
                    await asyncio.sleep(wait)
                    continue
                for d in waiting:
                    log.error(
                        "could not record the %s of notification %s (instance %s) attempt %s: "
                        "%s; it will be claimed again when its lease runs out",
                        d.outcome.result, d.claimed.notification_id, d.claimed.instance_id,
                        d.claimed.attempt, exc,
                        extra={
                            "instance_id": d.claimed.instance_id,
                            "notification_id": d.claimed.notification_id,
                            "attempt": d.claimed.attempt,
                            "unrecorded_outcome": d.outcome.result,
                        },
                    )  # fmt: skip
                    results[id(d)] = Outcome("unrecorded", d.outcome.result)
                break
            for d in waiting:
                results[id(d)] = d.outcome
            break
        for d in chunk:
            results.setdefault(id(d), d.outcome)
        return results

    def _log(self, decided: _Decided, outcome: Outcome, seconds: float) -> None:
        claimed, channel = decided.claimed, decided.channel
        request = _request_fields(claimed)
        level = logging.INFO if outcome.result in ("sent", "retry") else logging.WARNING
        fields: dict[str, object] = {
            "instance_id": claimed.instance_id,
            "notification_id": claimed.notification_id,
            "attempt": claimed.attempt,
            "kind": claimed.kind,
            "message_type": request.get("message_type"),
            "requested_channel": request.get("channel"),
            "channel": channel,
            "outcome": outcome.result,
            "duration_ms": round(seconds * 1000, 1),
        }
        if outcome.reason:
            fields["reason"] = outcome.reason
        # No error text here: it may quote a provider's answer, and a provider may
        # echo the one-time code. It is in the log's retry/canceled event instead
        # (`tidings history <notification id>`).
        log.log(
            level,
            "notification %s instance %s attempt %s %s %s via %s: %s%s (%.0f ms)",
            claimed.notification_id, claimed.instance_id, claimed.attempt,
            request.get("message_type", "?"), request.get("channel", "?"), channel or "-",
            outcome.result, f" ({outcome.reason})" if outcome.reason else "", seconds * 1000,
            extra=fields,
        )  # fmt: skip


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "request"
    return f"{where}: {error['msg']}"


def _request_fields(claimed: Claimed) -> dict[str, Any]:
    """The request as the queue holds it (a malformed one as no fields), for logs and keys."""
    return claimed.request if isinstance(claimed.request, dict) else {}


def _message_type(claimed: Claimed) -> str | None:
    value = _request_fields(claimed).get("message_type")
    return str(value) if value is not None else None


def _user_key(claimed: Claimed) -> tuple[str, str]:
    return claimed.instance_id, str(_request_fields(claimed).get("user_id", ""))


def notification_event(claimed: Claimed, event_type: str, payload: dict[str, object]) -> NewEvent:
    """An outcome on the notification aggregate, expecting the sequence seen at claim time."""
    return NewEvent(
        instance_id=claimed.instance_id,
        aggregate_type=NOTIFICATION_AGGREGATE,
        aggregate_id=claimed.notification_id,
        event_type=event_type,
        payload=payload,
        expected_sequence=claimed.sequence,
        creator=CREATOR,
    )


def sent_events(
    claimed: Claimed,
    request: Request,
    channel: str,
    provider_message_id: str,
    *,
    inapp: InAppContent | None = None,
) -> list[NewEvent]:
    """What a sent attempt appends: notification.sent and the source aggregate's sent event.

    An in-app message's rendered item goes into notification.sent: the feed
    read model shows it in the same transaction, and the log can rebuild it.
    """
    sent = Sent(
        channel=channel,
        provider_message_id=provider_message_id,
        attempt=claimed.attempt,
        inapp=inapp,
    )
    source_sent = SourceSent(
        notification_id=claimed.notification_id, message_type=request.message_type, channel=channel
    )
    return [
        notification_event(claimed, SENT, sent.payload()),
        NewEvent(
            instance_id=claimed.instance_id,
            aggregate_type=request.source.aggregate_type,
            aggregate_id=request.source.aggregate_id,
            event_type=request.sent_event_type,
            payload=source_sent.model_dump(mode="json"),
            owner=request.resource_owner,
            creator=CREATOR,
        ),
    ]
