"""The lifecycle's rules as pure functions: no database, no channel, milliseconds each.

decide: what a worker appends after picking a notification up and after its
attempt; evolve: which events may follow which. The invariants are checked by
hypothesis over random lives (outcomes, clocks, policies, random draws).
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.lifecycle_helpers import T0, Event, policy, request, requested_state, user
from tidings.notification.backoff import Backoff
from tidings.notification.events import (
    ARCHIVED,
    CANCELED,
    READ,
    RETRY_REQUESTED,
    SEEN,
    SENT,
    UNREAD,
    Canceled,
    CancelReason,
    InAppContent,
    Mark,
    RetryRequested,
    Sent,
)
from tidings.notification.lifecycle import (
    Delivered,
    Due,
    Engagement,
    Failed,
    IllegalEvent,
    NotificationState,
    Status,
    Verdict,
    decide,
    evolve,
    step,
)
from tidings.notification.requests import REQUESTED, NotificationRequested

NOW = T0 + timedelta(seconds=30)


def requested_event(sequence: int = 1, **fields: Any) -> Event:
    payload = NotificationRequested(request=request(**fields)).model_dump(mode="json")
    return Event(REQUESTED, sequence, payload)


def only(decision: Any) -> Any:
    (payload,) = decision.payloads
    return payload


# --- decide: picked up --------------------------------------------------------------


def test_a_due_request_is_sent_to_the_current_user() -> None:
    ada = user()
    decision = decide(requested_state(), Due(user=ada), now=NOW, policy=policy())
    assert decision.verdict is Verdict.SEND and decision.user == ada
    assert decision.payloads == () and decision.events == []


def test_a_retry_renders_from_the_first_attempts_snapshot() -> None:
    snapshot = user(verified_email="old@example.com")
    state = requested_state(status=Status.RETRYING, attempts=1, notify_user=snapshot)
    now_user = user(verified_email="new@example.com")
    decision = decide(state, Due(user=now_user), now=NOW, policy=policy())
    assert decision.verdict is Verdict.SEND and decision.user == snapshot


@pytest.mark.parametrize("attempts", [0, 2])
def test_past_max_ttl_cancels_without_sending(attempts: int) -> None:
    status = Status.RETRYING if attempts else Status.REQUESTED
    state = requested_state(status=status, attempts=attempts, notify_user=user())
    late = T0 + timedelta(minutes=5, seconds=1)
    decision = decide(state, Due(user=user()), now=late, policy=policy())
    canceled = only(decision)
    assert decision.verdict is Verdict.CANCELED and decision.reason is CancelReason.EXPIRED
    assert canceled == Canceled(
        reason=CancelReason.EXPIRED,
        error=f"not sent within max_ttl (5m) of its request at {T0.isoformat()}",
        attempt=attempts,
    )
    on_time = decide(state, Due(user=user()), now=T0 + timedelta(minutes=5), policy=policy())
    assert on_time.verdict is Verdict.SEND, "max_ttl itself is still in time"


def test_an_unreadable_request_cancels() -> None:
    state = requested_state(request=None)
    decision = decide(state, Due(user=None, request_error="user_id: bad"), now=NOW, policy=policy())
    assert decision.reason is CancelReason.INVALID_REQUEST
    assert only(decision).error == "the request in the log cannot be read: user_id: bad"
    assert only(decision).attempt == 0


def test_a_removed_user_cancels_even_with_a_snapshot() -> None:
    state = requested_state(status=Status.RETRYING, attempts=1, notify_user=user())
    decision = decide(state, Due(user=user(state="removed")), now=NOW, policy=policy())
    assert decision.reason is CancelReason.USER_REMOVED
    assert (only(decision).error, only(decision).attempt) == ("user user-ada was removed", 1)


def test_an_unknown_user_waits_for_the_users_model_to_pass_the_request() -> None:
    """Not yet in the users model, which has not read up to the request's source event
    (position 1 here): no attempt, no event, looked at again shortly."""
    for checkpoint in (None, 0):
        decision = decide(
            requested_state(), Due(user=None, users_checkpoint=checkpoint), now=NOW,
            policy=policy(),
        )  # fmt: skip
        assert decision.verdict is Verdict.WAIT and decision.payloads == ()
        assert decision.due_at == NOW + timedelta(seconds=1)
        assert decision.why is not None and "not in the users read model yet" in decision.why


def test_a_user_still_unknown_once_the_model_passed_the_request_cancels() -> None:
    decision = decide(
        requested_state(), Due(user=None, users_checkpoint=1), now=NOW, policy=policy()
    )
    assert decision.reason is CancelReason.USER_UNKNOWN
    assert only(decision) == Canceled(
        reason=CancelReason.USER_UNKNOWN,
        error="user user-ada is not in the users read model, which has read the log up to "
        "position 1, past the request's source event at 1",
        attempt=0,
    )
    # With a snapshot a retry goes on: the snapshot is what it renders from.
    state = requested_state(status=Status.RETRYING, attempts=1, notify_user=user())
    assert decide(state, Due(user=None), now=NOW, policy=policy()).verdict is Verdict.SEND


@pytest.mark.parametrize("attempts", [0, 1])
def test_an_expired_code_cancels_without_sending(attempts: int) -> None:
    """The code was added at T0 and is valid 10 minutes; max_ttl is longer here."""
    status = Status.RETRYING if attempts else Status.REQUESTED
    state = requested_state(status=status, attempts=attempts, notify_user=user(),
                            request=request(code={"v": "x"}))  # fmt: skip
    long_ttl = policy(max_ttl=timedelta(hours=1))
    in_time = T0 + timedelta(minutes=9, seconds=59)
    assert decide(state, Due(user=user()), now=in_time, policy=long_ttl).verdict is Verdict.SEND
    expired = decide(state, Due(user=user()), now=T0 + timedelta(minutes=10), policy=long_ttl)
    assert expired.reason is CancelReason.CODE_EXPIRED
    assert only(expired).attempt == attempts, "no attempt made"
    assert only(expired).error.startswith(
        f"its code expired at {(T0 + timedelta(minutes=10)).isoformat()} (10m after "
        "user.human.password.code.added"
    )
    # Without a code there is nothing to expire.
    codeless = requested_state(request=request(code=None))
    later = T0 + timedelta(minutes=30)
    assert decide(codeless, Due(user=user()), now=later, policy=long_ttl).verdict is Verdict.SEND


# --- decide: after the attempt --------------------------------------------------------


def test_delivered_is_sent_with_the_attempt_number() -> None:
    state = requested_state(status=Status.RETRYING, attempts=2, notify_user=user())
    decision = decide(state, Delivered(channel="smtp", provider_message_id="m-1"), now=NOW,
                      policy=policy())  # fmt: skip
    assert decision.verdict is Verdict.SENT
    assert only(decision) == Sent(channel="smtp", provider_message_id="m-1", attempt=3)
    assert decision.events == [
        (SENT, {"channel": "smtp", "provider_message_id": "m-1", "attempt": 3})
    ]


def test_a_transient_failure_retries_with_the_first_backoff() -> None:
    ada = user()
    p = policy(min_delay=timedelta(seconds=2), factor=1.5)
    decision = decide(requested_state(), Failed(error="503 busy", user=ada), now=NOW, policy=p)
    retry = only(decision)
    assert decision.verdict is Verdict.RETRY and isinstance(retry, RetryRequested)
    assert retry.attempt == 1 and retry.backoff == timedelta(seconds=2)
    assert retry.due_at == decision.due_at == NOW + timedelta(seconds=2)
    assert retry.notify_user == ada and retry.error == "503 busy"
    assert retry.request == request()
    ((event_type, payload),) = decision.events
    assert event_type == RETRY_REQUESTED and payload["backoff"] == "2s", "text only on the wire"


def test_the_next_backoff_grows_from_the_last_one() -> None:
    state = requested_state(
        status=Status.RETRYING, attempts=1, notify_user=user(), backoff=timedelta(seconds=3)
    )
    top = policy(uniform=lambda low, high: high)
    retry = only(decide(state, Failed(error="x"), now=NOW, policy=top))
    assert retry.backoff == timedelta(seconds=6) and retry.attempt == 2
    assert retry.notify_user == user(), "the snapshot is kept"


def test_retry_after_wins_only_when_later_than_the_backoff() -> None:
    later = Failed(error="429", retry_after=timedelta(seconds=120), user=user())
    assert decide(requested_state(), later, now=NOW, policy=policy()).due_at == NOW + timedelta(
        seconds=120
    )
    sooner = Failed(error="429", retry_after=timedelta(milliseconds=10), user=user())
    assert decide(requested_state(), sooner, now=NOW, policy=policy()).due_at == NOW + timedelta(
        seconds=1
    )


@pytest.mark.parametrize(("max_attempts", "attempts"), [(3, 2), (1, 0)])
def test_the_last_allowed_attempt_cancels(max_attempts: int, attempts: int) -> None:
    status = Status.RETRYING if attempts else Status.REQUESTED
    state = requested_state(status=status, attempts=attempts, notify_user=user())
    decision = decide(state, Failed(error="500"), now=NOW, policy=policy(max_attempts=max_attempts))
    assert decision.reason is CancelReason.MAX_ATTEMPTS
    assert only(decision).attempt == max_attempts
    assert only(decision).error == f"attempt {max_attempts} of {max_attempts} failed: 500"


def test_a_permanent_failure_cancels_at_once() -> None:
    decision = decide(requested_state(), Failed(error="400 bad", permanent=True, user=user()),
                      now=NOW, policy=policy())  # fmt: skip
    assert decision.reason is CancelReason.PERMANENT_ERROR
    assert (only(decision).attempt, only(decision).error) == (1, "400 bad")


def test_a_failure_with_nobody_to_retry_for_cancels() -> None:
    decision = decide(requested_state(), Failed(error="internal"), now=NOW, policy=policy())
    assert decision.reason is CancelReason.PERMANENT_ERROR and only(decision).attempt == 1


def test_nothing_is_decided_for_a_settled_notification() -> None:
    state = requested_state(status=Status.SENT, sequence=2, attempts=1)
    with pytest.raises(IllegalEvent, match="already sent") as caught:
        decide(state, Due(user=user()), now=NOW, policy=policy())
    assert caught.value.status is Status.SENT


# --- evolve ---------------------------------------------------------------------------


def test_evolve_folds_a_life() -> None:
    ada = user()
    retry = RetryRequested(request=request(), notify_user=ada, backoff=timedelta(seconds=1.5),
                           attempt=1, error="503", due_at=NOW)  # fmt: skip
    state = evolve(None, requested_event())
    assert state == NotificationState(
        status=Status.REQUESTED, sequence=1, requested_at=T0, due_at=T0, request=request()
    )
    assert state.queue_row() == {"kind": "request", "sequence": 1, "attempts": 0,
                                 "requested_at": T0, "due_at": T0, "backoff": None}  # fmt: skip
    state = evolve(state, Event(RETRY_REQUESTED, 2, retry.model_dump(mode="json")))
    assert (state.status, state.attempts, state.backoff, state.due_at) == (
        Status.RETRYING, 1, timedelta(seconds=1.5), NOW,
    )  # fmt: skip
    assert state.notify_user == ada and state.last_error == "503"
    sent = Sent(channel="smtp", provider_message_id="m", attempt=2).model_dump(mode="json")
    state = evolve(state, Event(SENT, 3, sent))
    assert (state.status, state.attempts, state.sequence) == (Status.SENT, 2, 3)
    assert state.queue_row() is None


def _refusal(state: NotificationState | None, event: Event) -> IllegalEvent:
    with pytest.raises(IllegalEvent) as caught:
        evolve(state, event)
    return caught.value


def test_evolve_refuses_what_may_not_follow() -> None:
    requested = evolve(None, requested_event())
    canceled = Canceled(reason=CancelReason.EXPIRED, error="late", attempt=0)
    settled = evolve(requested, Event(CANCELED, 2, canceled.model_dump(mode="json")))
    sent1 = Sent(channel="smtp", provider_message_id="m", attempt=1).model_dump(mode="json")

    first = _refusal(None, Event(SENT, 1, sent1))
    assert (first.rule, first.status, first.event_type) == ("starts-with-requested", None, SENT)
    assert str(first) == (
        "the first event is notification.sent at sequence 1; a notification starts with "
        "notification.requested at sequence 1"
    )
    assert _refusal(None, requested_event(sequence=3)).rule == "starts-with-requested"
    again = _refusal(requested, requested_event(sequence=2))
    assert str(again) == "notification.requested again at sequence 2; only sequence 1 requests"
    after = _refusal(settled, Event(SENT, 3, sent1))
    assert (after.rule, after.status) == ("settled-once", Status.CANCELED)
    assert "notification.canceled at sequence 2 is settled again by notification.sent" in str(after)
    skipped = _refusal(requested, Event(SENT, 2, {**sent1, "attempt": 2}))
    assert skipped.rule == "attempts"
    assert "sent on attempt 2 after 0 failed, expected attempt 1" in str(skipped)
    miscounted = Canceled(reason=CancelReason.EXPIRED, error="", attempt=1)
    assert "(expired) counts 1 attempts after 0 failed, expected 0" in str(
        _refusal(requested, Event(CANCELED, 2, miscounted.model_dump(mode="json")))
    )
    assert _refusal(requested, Event("notification.escalated", 2, {})).rule == (
        "unknown-event-type"
    )
    unreadable = _refusal(requested, Event(SENT, 2, {"attempt": 1}))
    assert unreadable.rule == "unreadable-payload" and "channel: Field required" in str(unreadable)


def test_step_goes_on_past_a_refused_event_as_the_audit_reads_it() -> None:
    requested = evolve(None, requested_event())
    # An unreadable sent still settles; whatever follows is refused as after a settle.
    settled, refusals = step(requested, Event(SENT, 2, {"attempt": 1}))
    assert settled is not None and settled.status is Status.SENT
    assert [r.rule for r in refusals] == ["unreadable-payload"]
    _, refusals = step(settled, requested_event(sequence=3))
    assert [r.rule for r in refusals] == ["settled-once"]
    # An orphan sent breaks two rules at once: both are told.
    sent3 = Sent(channel="smtp", provider_message_id="m", attempt=3).model_dump(mode="json")
    _, refusals = step(None, Event(SENT, 1, sent3))
    assert [r.rule for r in refusals] == ["starts-with-requested", "attempts"]


# --- properties over random lives ---------------------------------------------------

outcomes = st.one_of(
    st.builds(lambda: Delivered(channel="smtp", provider_message_id="m")),
    st.builds(
        lambda after: Failed(error="busy", retry_after=after),
        st.none() | st.timedeltas(min_value=timedelta(0), max_value=timedelta(minutes=3)),
    ),
    st.just(Failed(error="no such user", permanent=True)),
    st.just(Failed(error="timeout")),
)


@settings(max_examples=300, deadline=None)
@given(
    max_attempts=st.integers(1, 6),
    factor=st.floats(0.5, 3.0),
    min_seconds=st.floats(0.001, 5.0),
    max_seconds=st.floats(0.001, 60.0),
    ttl_minutes=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
    lives=st.lists(
        st.tuples(outcomes, st.timedeltas(min_value=timedelta(0), max_value=timedelta(minutes=2))),
        min_size=1,
        max_size=10,
    ),
)
def test_invariants_of_every_life(
    max_attempts: int, factor: float, min_seconds: float, max_seconds: float, ttl_minutes: int,
    seed: int, lives: list[tuple[Any, timedelta]],
) -> None:  # fmt: skip
    """Settled at most once; attempts 1..n <= max; backoffs grow within [b, b x factor]
    and stay <= max; nothing is sent past max_ttl; evolve accepts everything decided."""
    rng = random.Random(seed)
    p = policy(
        max_attempts=max_attempts,
        max_ttl=timedelta(minutes=ttl_minutes),
        min_delay=timedelta(seconds=min_seconds),
        max_delay=timedelta(seconds=max_seconds),
        factor=factor,
        uniform=rng.uniform,
    )
    ada = user()
    state = evolve(None, requested_event())
    requested_at = state.requested_at
    assert requested_at is not None
    sequence, now, attempts_made = 1, T0, []
    for happened, wait in lives:
        assert state.status.is_open
        assert state.due_at is not None
        now = max(now, state.due_at) + wait
        picked = decide(state, Due(user=ada), now=now, policy=p)
        if picked.verdict is Verdict.SEND:
            assert now <= requested_at + p.max_ttl, "nothing sent past max_ttl"
            if isinstance(happened, Failed):
                happened = Failed(error=happened.error, permanent=happened.permanent,
                                  retry_after=happened.retry_after, user=picked.user)  # fmt: skip
            decision = decide(state, happened, now=now, policy=p)
        else:
            decision = picked
            assert decision.reason is CancelReason.EXPIRED
        previous = state
        for event_type, payload in decision.events:
            sequence += 1
            state = evolve(state, Event(event_type, sequence, payload, created_at=now))
        if decision.verdict in (Verdict.RETRY, Verdict.SENT) or decision.reason in (
            CancelReason.MAX_ATTEMPTS, CancelReason.PERMANENT_ERROR,
        ):  # fmt: skip
            attempts_made.append(previous.attempt)
        if decision.verdict is Verdict.RETRY:
            assert state.backoff is not None
            low = max(previous.backoff or p.backoff.min_delay, p.backoff.min_delay)
            low = min(low, p.backoff.max_delay)
            high = low * max(factor, 1.0)
            slack = timedelta(milliseconds=1)  # the wire keeps milliseconds
            assert low - slack <= state.backoff <= high + slack
            assert state.backoff <= p.backoff.max_delay + slack
            assert state.due_at is not None and state.due_at >= now + state.backoff - slack
        if not state.status.is_open:
            break
    assert attempts_made == list(range(1, len(attempts_made) + 1)), "numbered 1..n"
    assert len(attempts_made) <= max_attempts
    if not state.status.is_open:
        # Settled once: nothing may follow, whatever it is.
        sent = Sent(channel="smtp", provider_message_id="m", attempt=state.attempts + 1)
        with pytest.raises(IllegalEvent, match="nothing may follow"):
            evolve(state, Event(SENT, sequence + 1, sent.model_dump(mode="json")))
        with pytest.raises(IllegalEvent):
            decide(state, Due(user=ada), now=now, policy=p)


# --- backoff ------------------------------------------------------------------------


def test_backoff_grows_within_bounds_and_caps() -> None:
    draws: list[tuple[float, float]] = []

    def top(low: float, high: float) -> float:
        draws.append((low, high))
        return high

    b = Backoff(
        min_delay=timedelta(seconds=1), max_delay=timedelta(seconds=20), factor=2, uniform=top
    )
    delays = []
    previous = None
    for _ in range(7):
        previous = b.next(previous)
        delays.append(previous.total_seconds())
    assert delays == [2, 4, 8, 16, 20, 20, 20]
    assert draws[:3] == [(1, 2), (2, 4), (4, 8)]


@pytest.mark.parametrize("factor", [0.5, 1.0, 0.0])
def test_backoff_factor_below_one_counts_as_one(factor: float) -> None:
    def never(low: float, high: float) -> float:
        raise AssertionError("an empty range must not be drawn from")

    b = Backoff(
        min_delay=timedelta(seconds=3),
        max_delay=timedelta(seconds=20),
        factor=factor,
        uniform=never,
    )
    assert b.next(None) == b.next(timedelta(seconds=3)) == timedelta(seconds=3)


def test_a_direct_request_is_not_sent_after_its_not_after() -> None:
    """POST /v1/notifications: no source event; `not_after` is the producer's deadline."""
    direct = request(source=None, sent_event_type=None, not_after=T0 + timedelta(minutes=1))
    state = requested_state(request=direct)
    on_time = decide(state, Due(user=user()), now=T0 + timedelta(seconds=59), policy=policy())
    assert on_time.verdict is Verdict.SEND
    late = decide(
        state, Due(user=user()), now=T0 + timedelta(minutes=1, seconds=1), policy=policy()
    )
    assert late.reason is CancelReason.EXPIRED
    assert (
        only(late).error
        == f"not sent by its not_after time {(T0 + timedelta(minutes=1)).isoformat()}"
    )


def test_a_direct_request_waits_for_an_unknown_user_until_max_ttl() -> None:
    """No source event to measure the users model against: it waits, then max_ttl cancels."""
    state = requested_state(request=request(source=None, sent_event_type=None))
    waiting = decide(state, Due(user=None, users_checkpoint=99), now=NOW, policy=policy())
    assert waiting.verdict is Verdict.WAIT and waiting.payloads == ()
    past_ttl = decide(
        state, Due(user=None), now=T0 + timedelta(minutes=5, seconds=1), policy=policy()
    )
    assert past_ttl.reason is CancelReason.EXPIRED


# --- the feed's marks -----------------------------------------------------------------


def _sent_in_app(user_id: str = "user-ada") -> NotificationState:
    item = InAppContent(user_id=user_id, message_type="PasswordChange", lang="en",
                        title="Your password changed", body="...")  # fmt: skip
    sent = Sent(channel="inapp", provider_message_id="inapp-n", attempt=1, inapp=item)
    return evolve(evolve(None, requested_event()), Event(SENT, 2, sent.payload()))


def _mark(event_type: str, sequence: int, user_id: str = "user-ada") -> Event:
    return Event(event_type, sequence, Mark(user_id=user_id).model_dump(mode="json"))


def test_marks_move_an_in_app_item_and_leave_it_sent() -> None:
    state = _sent_in_app()
    assert (state.status, state.sent_via, state.inapp_user) == (Status.SENT, "inapp", "user-ada")
    state = evolve(state, _mark(READ, 3))
    assert (state.status, state.sequence, state.engagement) == (
        Status.SENT, 3, Engagement(seen=True, read=True),
    )  # fmt: skip
    state = evolve(evolve(state, _mark(UNREAD, 4)), _mark(ARCHIVED, 5))
    assert state.engagement == Engagement(seen=True, read=False, archived=True)
    assert state.queue_row() is None


def test_a_mark_follows_only_an_in_app_send_for_its_user() -> None:
    requested = evolve(None, requested_event())
    pending = _refusal(requested, _mark(SEEN, 2))
    assert pending.rule == "marks" and "the notification is not settled" in str(pending)
    by_email = Sent(channel="smtp", provider_message_id="m", attempt=1).payload()
    emailed = evolve(requested, Event(SENT, 2, by_email))
    assert "sent via smtp" in str(_refusal(emailed, _mark(READ, 3)))
    canceled = Canceled(reason=CancelReason.EXPIRED, error="late", attempt=0)
    settled = evolve(requested, Event(CANCELED, 2, canceled.model_dump(mode="json")))
    refused = _refusal(settled, _mark(READ, 3))
    assert refused.rule == "marks" and "notification.canceled" in str(refused)
    other = _refusal(_sent_in_app(), _mark(SEEN, 3, user_id="user-bob"))
    assert other.rule == "marks" and "for user user-bob, the item is user user-ada's" in str(other)
    read = evolve(_sent_in_app(), _mark(READ, 3))
    twice = _refusal(read, _mark(READ, 4))
    assert twice.rule == "marks" and "changes nothing" in str(twice)
    unreadable = _refusal(read, Event(SEEN, 4, {}))
    assert unreadable.rule == "unreadable-payload"
    # A reader going on past a refused mark keeps the item as it was.
    after, refusals = step(read, _mark(READ, 4, user_id="user-bob"))
    assert after is not None and after.engagement == read.engagement and after.sequence == 4
    assert [r.rule for r in refusals] == ["marks", "marks"]


def test_an_in_app_delivery_keeps_its_item_in_the_sent_event() -> None:
    item = InAppContent(user_id="user-ada", message_type="PasswordChange", lang="en",
                        title="Your password changed", body="...")  # fmt: skip
    state = requested_state(notify_user=user())
    in_app = Delivered(channel="inapp", provider_message_id="inapp-n", inapp=item)
    [(event_type, payload)] = decide(state, in_app, now=NOW, policy=policy()).events
    assert event_type == SENT and payload["inapp"]["user_id"] == "user-ada"
    by_email = Delivered(channel="smtp", provider_message_id="m-1")
    [(_, payload)] = decide(state, by_email, now=NOW, policy=policy()).events
    assert "inapp" not in payload  # other sends look as before
