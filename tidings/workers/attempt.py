"""One attempt at one notification: decide, render, send, record the outcome.

The send happens outside any database transaction. The outcome is one append
that expects the sequence the notification had when it was claimed: if its
lease ran out and another worker settled or rescheduled it meanwhile, that
append is refused, so a notification is never settled twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal

from pydantic import ValidationError

from tidings.clock import Clock
from tidings.config import NotificationSettings
from tidings.config.masking import IN_FLIGHT
from tidings.eventstore import ConcurrencyError, DatabaseUnavailable, EventStore, NewEvent
from tidings.metrics import Metrics
from tidings.notification.backoff import Backoff
from tidings.notification.channels.registry import ChannelRegistry
from tidings.notification.compose import MessageComposer
from tidings.notification.errors import SendError, TransientSendError
from tidings.notification.events import SENT, InAppContent, Sent, SourceSent
from tidings.notification.lifecycle import (
    Decision,
    Delivered,
    Due,
    Failed,
    Happened,
    NotificationState,
    Policy,
    Status,
    Verdict,
    decide,
    describe_validation_error,
)
from tidings.notification.requests import (
    NOTIFICATION_AGGREGATE,
    NotifyUser,
    Request,
    inline_user,
)
from tidings.notification.wire import parse_duration
from tidings.workers.queue import Claimed
from tidings.workers.recording import lease_deadline, while_leased

log = logging.getLogger("tidings.workers")

# Many users at once, by (instance id, user id); unknown ones are left out.
UserLookup = Callable[[list[tuple[str, str]]], Awaitable[dict[tuple[str, str], NotifyUser]]]
# Where the users read model stands (the users projection's checkpoint).
UsersCheckpoint = Callable[[], Awaitable[int]]
# Put notifications off without an attempt: each claimable again from its time.
Release = Callable[[list[tuple[Claimed, datetime]]], Awaitable[None]]
Result = Literal["sent", "retry", "canceled", "wait", "refused", "unrecorded"]
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
        users_checkpoint: UsersCheckpoint,
        release: Release,
        settings: NotificationSettings,
        backoff: Backoff,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._composer = composer
        self._channels = channels
        self._users = users
        self._users_checkpoint = users_checkpoint
        self._release = release
        self._settings = settings
        self._policy = Policy(
            max_attempts=settings.max_attempts,
            max_ttl=settings.max_ttl,
            backoff=backoff,
            # A notification waiting for the users model is looked at again
            # after a projector poll, not after a whole lease.
            wait=timedelta(seconds=1),
        )
        self._clock = clock
        self._metrics = metrics

    async def run_bulk(self, bulk: list[Claimed]) -> list[Outcome]:
        """Attempt a claimed bulk concurrently, then record every outcome.

        Never raises: every way an attempt can end is an outcome, logged. The
        users come with the claim (or are read in one query for a bulk claimed
        without them) and the outcomes are appended together (one commit per
        bulk); a refused late outcome is taken out and the rest appended again.
        """
        deadline = lease_deadline(
            bulk, lease=self._settings.transaction_duration, clock=self._clock
        )
        users = _users_read(bulk)
        keys = sorted({_user_key(c) for c in bulk if not c.user_read})
        try:
            if keys:
                users |= await while_leased(
                    lambda: self._users(keys), deadline=deadline, clock=self._clock
                )
            # Only when a first attempt finds no user (rare): is the model behind?
            unknown = any(_user_key(c) not in users and not c.notify_user for c in bulk)
            checkpoint = (
                await while_leased(self._users_checkpoint, deadline=deadline, clock=self._clock)
                if unknown
                else None
            )
        except DatabaseUnavailable as exc:
            log.warning(
                "cannot read the users of a bulk of %d until its lease nearly ran out (%s); "
                "nothing was sent, they will be claimed again when their lease runs out: %s",
                len(bulk), exc, _describe_bulk(bulk),
                extra={"notification_ids": [c.notification_id for c in bulk]},
            )  # fmt: skip
            outcomes = [Outcome("unrecorded", "database unavailable") for _ in bulk]
            if self._metrics is not None:
                for claimed in bulk:
                    self._metrics.attempt("unrecorded", None, _message_type(claimed))
            return outcomes
        decided: list[_Decided]
        if len(bulk) == 1:  # the usual bulk of a quiet queue: no task to schedule
            decided = [await self._decide(bulk[0], users, checkpoint)]
        else:
            decided = list(
                await asyncio.gather(*(self._decide(c, users, checkpoint) for c in bulk))
            )
        recorded = await self._record(decided, deadline)
        await self._put_off([d for d in decided if d.outcome.result == "wait"])
        for d in decided:
            outcome = recorded[id(d)]
            self._log(d, outcome, time.monotonic() - d.started)
            if self._metrics is not None:
                self._count(d, outcome, self._metrics)
        return [recorded[id(d)] for d in decided]

    async def _put_off(self, waiting: list[_Decided]) -> None:
        """Release the leases of notifications that wait (no attempt): due again soon."""
        if not waiting:
            return
        until = self._clock() + self._policy.wait
        try:
            await self._release([(d.claimed, until) for d in waiting])
        except DatabaseUnavailable as exc:
            log.warning(
                "could not put off %d waiting notifications (%s); they will be claimed again "
                "when their lease runs out", len(waiting), exc,
            )  # fmt: skip

    def _count(self, decided: _Decided, outcome: Outcome, metrics: Metrics) -> None:
        metrics.attempt(outcome.result, decided.channel, _message_type(decided.claimed))
        if outcome.result == "canceled" and outcome.reason:
            metrics.cancel(outcome.reason)

    async def _decide(
        self,
        claimed: Claimed,
        users: dict[tuple[str, str], NotifyUser],
        users_checkpoint: int | None,
    ) -> _Decided:
        started = time.monotonic()
        try:
            state, request_error = _state_of(claimed)
        except (ValidationError, ValueError) as exc:  # a retry's snapshot or backoff
            state = _unreadable_state(claimed)
            request_error = _first_error(exc)
        try:
            decision, channel = await self._attempt(
                claimed, state, request_error, users, users_checkpoint
            )
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
            failed = Failed(error=f"internal error: {type(exc).__name__}: {exc}", permanent=True)
            decision, channel = self._decide_now(state, failed), None
        events = [notification_event(claimed, t, payload) for t, payload in decision.events]
        if decision.verdict is Verdict.SENT and state.request is not None and channel:
            source_sent = source_sent_event(claimed, state.request, channel)
            if source_sent is not None:
                events.append(source_sent)
        outcome = _outcome(decision)
        return _Decided(claimed, events, outcome, channel, started)

    def _decide_now(self, state: NotificationState, happened: Happened) -> Decision:
        return decide(state, happened, now=self._clock(), policy=self._policy)

    async def _attempt(
        self,
        claimed: Claimed,
        state: NotificationState,
        request_error: str | None,
        users: dict[tuple[str, str], NotifyUser],
        users_checkpoint: int | None,
    ) -> tuple[Decision, str | None]:
        """Ask the lifecycle whether to send; send if so; ask it what the outcome means."""
        user_id = state.request.user_id if state.request is not None else ""
        # A direct request's inline recipient stands in for the read model's user.
        inline = inline_user(claimed.instance_id, state.request) if state.request else None
        current = inline or users.get((claimed.instance_id, user_id))
        due = Due(user=current, request_error=request_error, users_checkpoint=users_checkpoint)
        picked = self._decide_now(state, due)
        if picked.verdict is not Verdict.SEND:
            return picked, None
        request, user = state.request, picked.user
        assert request is not None
        assert user is not None
        channel_name = self._channels.name_for(claimed.instance_id, request.channel)
        try:
            message = self._composer.compose(
                notification_id=claimed.notification_id,
                instance_id=claimed.instance_id,
                attempt=claimed.attempt,
                request=request,
                user=user,
            )
        except SendError as exc:  # nothing rendered, no code in flight
            return self._decide_now(state, _failed(exc, str(exc), user)), channel_name
        # From rendering to the decision the code is in flight: no log line of any
        # logger may show it (tidings.cli.logs masks what IN_FLIGHT holds).
        with IN_FLIGHT.holding(message.sensitive):
            try:
                channel = self._channels.channel_for(claimed.instance_id, request.channel)
                sending = time.monotonic()
                try:
                    async with asyncio.timeout(self._send_timeout()):
                        provider_id = await channel.send(message)
                finally:
                    if self._metrics is not None:
                        self._metrics.sent_in(channel_name, time.monotonic() - sending)
            except SendError as exc:
                # A provider may quote the request, code included, in its error:
                # the error goes into the log, the code never does.
                failed = _failed(exc, message.scrub(str(exc)), user)
                return self._decide_now(state, failed), channel_name
            except TimeoutError:
                error = (
                    f"the {channel_name} channel did not answer within {self._send_timeout():g}s"
                )
                return self._decide_now(state, Failed(error=error, user=user)), channel_name
            inapp = message.content if isinstance(message.content, InAppContent) else None
            delivered = Delivered(
                channel=channel_name, provider_message_id=provider_id, inapp=inapp
            )
            return self._decide_now(state, delivered), channel_name

    def _send_timeout(self) -> float:
        # Well inside the lease, so a hung provider cannot outlive it and invite
        # a second worker to send the same attempt.
        return max(self._settings.transaction_duration.total_seconds() / 2, 0.1)

    async def _record(self, decided: list[_Decided], deadline: datetime) -> dict[int, Outcome]:
        """Append the outcomes, a chunk at a time; the result by id() of each decision."""
        results: dict[int, Outcome] = {}
        for start in range(0, len(decided), _RECORD_CHUNK):
            chunk = decided[start : start + _RECORD_CHUNK]
            results.update(await self._record_chunk(chunk, deadline))
        return results

    async def _record_chunk(self, chunk: list[_Decided], deadline: datetime) -> dict[int, Outcome]:
        results: dict[int, Outcome] = {}
        waiting = [d for d in chunk if d.events]
        while waiting:
            events = [e for d in waiting for e in d.events]
            owners = [d for d in waiting for _ in d.events]
            try:
                # Through an outage for as long as the lease covers the attempts:
                # given up, every message of the chunk would be sent again.
                await while_leased(
                    partial(self._store.append_unread, events),
                    deadline=deadline,
                    clock=self._clock,
                )
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
                log.error(
                    "gave up recording the outcomes of %d notifications as their lease nearly "
                    "ran out (%s); each will be claimed again when its lease runs out, and a "
                    "sent one sent again: %s",
                    len(waiting), exc,
                    "; ".join(f"{_describe(d.claimed)}: {d.outcome.result}" for d in waiting),
                    extra={
                        "notification_ids": [d.claimed.notification_id for d in waiting],
                        "unrecorded_outcomes": [d.outcome.result for d in waiting],
                    },
                )  # fmt: skip
                for d in waiting:
                    results[id(d)] = Outcome("unrecorded", d.outcome.result)
                break
            for d in waiting:
                results[id(d)] = d.outcome
            break
        for d in chunk:
            results.setdefault(id(d), d.outcome)
        return results

    def _log(self, decided: _Decided, outcome: Outcome, seconds: float) -> None:
        level = logging.INFO if outcome.result in ("sent", "retry", "wait") else logging.WARNING
        if not log.isEnabledFor(level):  # e.g. --log-level warning: no line, nothing to build
            return
        claimed, channel = decided.claimed, decided.channel
        request = _request_fields(claimed)
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


def _failed(exc: SendError, error: str, user: NotifyUser) -> Failed:
    """What a failed attempt tells the lifecycle: the (masked) error, whether it may be
    retried, and after how long at the earliest."""
    retry_after = exc.retry_after if isinstance(exc, TransientSendError) else None
    return Failed(
        error=error,
        permanent=not exc.transient,
        retry_after=timedelta(seconds=retry_after) if retry_after is not None else None,
        user=user,
    )


def _describe(claimed: Claimed) -> str:
    """Which notification, for a line about several: id, instance, attempt."""
    return (
        f"notification {claimed.notification_id} (instance {claimed.instance_id}, "
        f"attempt {claimed.attempt})"
    )


def _describe_bulk(bulk: list[Claimed]) -> str:
    return "; ".join(_describe(c) for c in bulk)


def _first_error(exc: ValidationError | ValueError) -> str:
    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)
    return str(exc)


def _state_of(claimed: Claimed) -> tuple[NotificationState, str | None]:
    """The notification as its queue row has it, and why its request cannot be read.

    Raises ValidationError or ValueError when a retry's snapshot or backoff does not read.
    """
    try:
        request: Request | None = Request.model_validate(claimed.request)
        request_error = None
    except ValidationError as exc:
        request, request_error = None, _first_error(exc)
    return _unreadable_state(
        claimed,
        backoff=_backoff(claimed.backoff) if claimed.backoff else None,
        request=request,
        notify_user=(
            NotifyUser.model_validate(claimed.notify_user) if claimed.notify_user else None
        ),
        last_error=claimed.last_error,
    ), request_error


@functools.lru_cache(maxsize=1024)
def _backoff(text: str) -> timedelta:
    """A queue row's backoff, read once per distinct text (there are a handful)."""
    return parse_duration(text)


def _unreadable_state(claimed: Claimed, **read: Any) -> NotificationState:
    """The state the queue row gives; `read` adds what could be read of its payloads."""
    return NotificationState(
        status=Status.RETRYING if claimed.kind == "retry" else Status.REQUESTED,
        sequence=claimed.sequence,
        attempts=claimed.attempts,
        requested_at=claimed.requested_at,
        due_at=claimed.due_at,
        **read,
    )


def _outcome(decision: Decision) -> Outcome:
    if decision.verdict is Verdict.RETRY:
        assert decision.due_at is not None
        return Outcome("retry", f"due {decision.due_at.isoformat()}")
    if decision.verdict is Verdict.CANCELED:
        return Outcome("canceled", decision.reason)
    if decision.verdict is Verdict.WAIT:
        return Outcome("wait", decision.why)
    return Outcome("sent")


def _request_fields(claimed: Claimed) -> dict[str, Any]:
    """The request as the queue holds it (a malformed one as no fields), for logs and keys."""
    return claimed.request if isinstance(claimed.request, dict) else {}


def _message_type(claimed: Claimed) -> str | None:
    value = _request_fields(claimed).get("message_type")
    return str(value) if value is not None else None


def _users_read(bulk: list[Claimed]) -> dict[tuple[str, str], NotifyUser]:
    """The users that came with the claim, by (instance id, user id)."""
    users: dict[tuple[str, str], NotifyUser] = {}
    for claimed in bulk:
        if claimed.user is not None:
            user = NotifyUser.model_validate(claimed.user)
            users[user.instance_id, user.user_id] = user
    return users


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
    """What a sent attempt appends: notification.sent and the source aggregate's sent event
    (a direct request, with no source, only the first).

    An in-app message's rendered item goes into notification.sent: the feed
    read model shows it in the same transaction, and the log can rebuild it.
    """
    sent = Sent(
        channel=channel,
        provider_message_id=provider_message_id,
        attempt=claimed.attempt,
        inapp=inapp,
    )
    recorded = notification_event(claimed, SENT, sent.payload())
    source_sent = source_sent_event(claimed, request, channel)
    return [recorded] if source_sent is None else [recorded, source_sent]


def source_sent_event(claimed: Claimed, request: Request, channel: str) -> NewEvent | None:
    """The source aggregate's sent event (e.g. user.human.password.code.sent); None for a
    direct request, which has no source."""
    if request.source is None or not request.sent_event_type:
        return None
    payload = SourceSent.payload_of(
        notification_id=claimed.notification_id, message_type=request.message_type, channel=channel
    )
    return NewEvent(
        instance_id=claimed.instance_id,
        aggregate_type=request.source.aggregate_type,
        aggregate_id=request.source.aggregate_id,
        event_type=request.sent_event_type,
        payload=payload,
        owner=request.resource_owner,
        creator=CREATOR,
    )
