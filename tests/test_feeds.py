"""The in-app channel and the feed read model: items, marks, counts, retention, rebuild."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.feed_helpers import now, send_inapp, sent_inapp
from tests.projection_helpers import user_added
from tidings.config import Settings, TemplateSettings
from tidings.eventstore import Database, EventQuery, EventStore
from tidings.feeds import engagement
from tidings.feeds.engagement import Engagement
from tidings.feeds.errors import FeedItemNotFound, InvalidCursor, MarkRefused
from tidings.feeds.operations import (
    feed_counts,
    get_item,
    list_feed,
    mark,
    prune_feed,
    read_all,
    rebuild_feed,
)
from tidings.notification.events import Canceled, Sent


async def notification_log(store: EventStore, nid: str) -> list[tuple[str, dict[str, Any]]]:
    events = await store.query(EventQuery(aggregate_types=("notification",), aggregate_ids=(nid,)))
    return [(e.event_type, e.payload) for e in events]


async def feed_tables(db: Database) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    async with db.pool.connection() as conn:
        items = await (
            await conn.execute(
                "SELECT * FROM tidings.feed_items ORDER BY instance_id, notification_id"
            )
        ).fetchall()
        counts = await (
            await conn.execute("SELECT * FROM tidings.feed_counts ORDER BY instance_id, user_id")
        ).fetchall()
    return items, counts


async def counts_from_list(store: EventStore, user_id: str = "user-ada") -> tuple[int, int, int]:
    page = await list_feed(store, instance_id="acme", user_id=user_id, limit=100)
    items = page.items
    return (
        len(items),
        sum(1 for i in items if i.read_at is None),
        sum(1 for i in items if i.seen_at is None),
    )


# --- the in-app channel, through the real worker pool -------------------------------


async def test_an_inapp_send_renders_the_item_onto_the_log_and_into_the_feed(
    db: Database,
) -> None:
    await send_inapp(db, ["n-1"])
    log = await notification_log(db.store, "n-1")
    assert [t for t, _ in log] == ["notification.requested", "notification.sent"]
    sent = Sent.model_validate(log[1][1])
    assert sent.channel == "inapp" and sent.inapp is not None
    assert sent.inapp.user_id == "user-ada"
    assert sent.inapp.title == "Your username changed"
    assert "ada@tmp.example.com" in sent.inapp.body
    assert sent.inapp.action_url == "https://app.example.com/account/user-ada"
    assert sent.inapp.data == {"temporary_username": "ada@tmp.example.com"}

    page = await list_feed(db.store, instance_id="acme", user_id="user-ada")
    [item] = page.items
    assert (item.notification_id, item.title, item.lang) == ("n-1", sent.inapp.title, "en")
    assert (item.seen_at, item.read_at, item.archived_at) == (None, None, None)
    counts = await feed_counts(db.store, instance_id="acme", user_id="user-ada")
    assert (counts.total, counts.unread, counts.unseen) == (1, 1, 1)


async def test_inapp_texts_follow_the_users_language_and_the_instance_overrides(
    db: Database, tmp_path: Path
) -> None:
    await db.store.append([user_added("user-hans", preferred_language="de")])
    await send_inapp(db, ["n-de"], user_id="user-hans", add_user=False)
    item = await get_item(db.store, instance_id="acme", user_id="user-hans", notification_id="n-de")
    assert (item.lang, item.title) == ("de", "Ihr Benutzername wurde geändert")

    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "texts.en.yaml").write_text(
        "DomainClaimed:\n  inapp_title: New login for {{ user.first_name }}\n"
        "  inapp_body: Sign in as {{ args.temporary_username }}\n",
        "utf-8",
    )
    settings = Settings(templates=TemplateSettings(dir=tmp_path))
    await send_inapp(db, ["n-en"], settings=settings)
    item = await get_item(db.store, instance_id="acme", user_id="user-ada", notification_id="n-en")
    assert (item.title, item.body) == ("New login for Ada", "Sign in as ada@tmp.example.com")


@pytest.mark.parametrize(
    ("message_type", "request_fields", "said"),
    [
        ("PasswordReset", {}, "PasswordReset is a one-time code message"),
        ("VerifySMSOTP", {}, "VerifySMSOTP is a one-time code message"),
        ("DomainClaimed", {"code": "482913"}, "DomainClaimed carries a one-time code"),
    ],
)  # fmt: skip
async def test_a_message_with_a_code_refuses_inapp_with_a_permanent_error(
    db: Database, message_type: str, request_fields: dict[str, Any], said: str
) -> None:
    await send_inapp(db, ["n-code"], message_type=message_type, **request_fields)
    log = await notification_log(db.store, "n-code")
    assert [t for t, _ in log] == ["notification.requested", "notification.canceled"]
    canceled = Canceled.model_validate(log[1][1])
    assert canceled.reason == "permanent_error"
    assert said in canceled.error and "send it by email or sms" in canceled.error
    assert (await list_feed(db.store, instance_id="acme", user_id="user-ada")).items == ()


# --- marks -------------------------------------------------------------------------


async def test_reading_twice_appends_once_and_each_mark_moves_the_counts(db: Database) -> None:
    store = db.store
    await sent_inapp(store, ["n-1", "n-2"])
    args: dict[str, Any] = {"instance_id": "acme", "user_id": "user-ada"}

    first = await mark(store, notification_id="n-1", action="read", **args)
    again = await mark(store, notification_id="n-1", action="read", **args)
    assert first.position is not None and again.position is None
    assert first.item.read_at is not None and first.item.seen_at is not None  # read is seen
    types = [t for t, _ in await notification_log(store, "n-1")]
    assert types.count("notification.read") == 1
    assert (await feed_counts(store, **args)).to_json() == {"total": 2, "unread": 1, "unseen": 1}

    await mark(store, notification_id="n-2", action="seen", **args)
    assert (await feed_counts(store, **args)).to_json() == {"total": 2, "unread": 1, "unseen": 0}
    await mark(store, notification_id="n-1", action="unread", **args)
    assert (await feed_counts(store, **args)).to_json() == {"total": 2, "unread": 2, "unseen": 0}
    await mark(store, notification_id="n-2", action="archive", **args)
    assert (await feed_counts(store, **args)).to_json() == {"total": 1, "unread": 1, "unseen": 0}

    unread = await list_feed(store, filter="unread", **args)
    archived = await list_feed(store, filter="archived", **args)
    everything = await list_feed(store, filter="all", **args)
    assert [i.notification_id for i in unread.items] == ["n-1"]
    assert [i.notification_id for i in archived.items] == ["n-2"]
    assert [i.notification_id for i in everything.items] == ["n-1"]

    await mark(store, notification_id="n-2", action="unarchive", **args)
    assert (await feed_counts(store, **args)).to_json() == {"total": 2, "unread": 2, "unseen": 0}
    log = [t for t, _ in await notification_log(store, "n-2")]
    assert log == [
        "notification.requested", "notification.sent", "notification.seen",
        "notification.archived", "notification.unarchived",
    ]  # fmt: skip
    [mark_event] = await store.query(
        EventQuery(event_types=("notification.seen",), aggregate_ids=("n-2",))
    )
    assert mark_event.payload == {"user_id": "user-ada"}
    assert mark_event.creator == "end-user:user-ada"


async def test_a_user_sees_and_marks_only_their_own_items(db: Database) -> None:
    await sent_inapp(db.store, ["n-ada"], user_id="user-ada")
    await sent_inapp(db.store, ["n-bob"], user_id="user-bob")
    await sent_inapp(db.store, ["n-other"], user_id="user-ada", instance_id="globex")
    with pytest.raises(FeedItemNotFound) as caught:
        await mark(db.store, instance_id="acme", user_id="user-ada", notification_id="n-bob",
                   action="read")  # fmt: skip
    assert caught.value.notification_id == "n-bob"
    with pytest.raises(FeedItemNotFound):
        await get_item(db.store, instance_id="acme", user_id="user-ada", notification_id="n-other")
    page = await list_feed(db.store, instance_id="acme", user_id="user-ada")
    assert [i.notification_id for i in page.items] == ["n-ada"]
    types = [t for t, _ in await notification_log(db.store, "n-bob")]
    assert types == ["notification.requested", "notification.sent"]


async def test_a_notification_not_sent_inapp_cannot_be_marked(db: Database) -> None:
    from tests.feed_helpers import inapp_requested

    await db.store.append([inapp_requested("n-pending")])
    with pytest.raises(FeedItemNotFound):
        await mark(db.store, instance_id="acme", user_id="user-ada", notification_id="n-pending",
                   action="read")  # fmt: skip
    assert [t for t, _ in await notification_log(db.store, "n-pending")] == [
        "notification.requested"
    ]


def test_the_mark_rules_are_idempotent_and_follow_an_inapp_send_only() -> None:
    state = Engagement()
    assert engagement.decide(state, "read") == "notification.read"
    state = engagement.evolve(state, "notification.read")
    assert state == Engagement(seen=True, read=True)
    assert engagement.decide(state, "read") is None
    assert engagement.decide(state, "seen") is None
    assert engagement.decide(state, "unread") == "notification.unread"
    assert engagement.decide(state, "unarchive") is None
    assert engagement.decide(state, "archive") == "notification.archived"
    engagement.may_mark(settled_by="notification.sent", channel="inapp", in_app=True)
    with pytest.raises(MarkRefused, match="sent via smtp"):
        engagement.may_mark(settled_by="notification.sent", channel="smtp", in_app=False)
    with pytest.raises(MarkRefused, match=r"notification\.canceled"):
        engagement.may_mark(settled_by="notification.canceled", channel=None, in_app=False)
    with pytest.raises(MarkRefused, match="not settled"):
        engagement.may_mark(settled_by=None, channel=None, in_app=False)


async def test_pages_go_newest_first_by_cursor(db: Database) -> None:
    ids = [f"n-{i:02d}" for i in range(7)]
    for nid in ids:  # one transaction each: positions in this order
        await sent_inapp(db.store, [nid])
    args: dict[str, Any] = {"instance_id": "acme", "user_id": "user-ada"}
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await list_feed(db.store, cursor=cursor, limit=3, **args)
        seen += [i.notification_id for i in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids[::-1]
    with pytest.raises(InvalidCursor):
        await list_feed(db.store, cursor="abc", **args)


async def test_read_all_marks_every_unread_item_in_one_append(db: Database) -> None:
    await sent_inapp(db.store, ["n-1", "n-2", "n-3"])
    args: dict[str, Any] = {"instance_id": "acme", "user_id": "user-ada"}
    await mark(db.store, notification_id="n-2", action="read", **args)
    assert await read_all(db.store, **args) == 2
    assert await read_all(db.store, **args) == 0
    assert (await feed_counts(db.store, **args)).to_json() == {
        "total": 3, "unread": 0, "unseen": 0,
    }  # fmt: skip
    reads = await db.store.query(EventQuery(event_types=("notification.read",)))
    assert sorted(e.aggregate_id for e in reads) == ["n-1", "n-2", "n-3"]
    assert len({e.position >> 16 for e in reads if e.aggregate_id != "n-2"}) == 1


# --- the race: counts always equal the list ---------------------------------------


async def test_counts_equal_the_list_after_50_concurrent_read_and_unread_calls(
    db: Database,
) -> None:
    store = db.store
    ids = [f"n-{i}" for i in range(5)]
    await sent_inapp(store, ids)
    args: dict[str, Any] = {"instance_id": "acme", "user_id": "user-ada"}
    rng = random.Random(14)
    actions: list[Any] = [
        mark(store, notification_id=rng.choice(ids), action=rng.choice(["read", "unread"]), **args)
        for _ in range(48)
    ]
    actions += [
        read_all(store, **args),
        mark(store, notification_id="n-0", action="archive", **args),
    ]
    results = await asyncio.gather(*actions)
    assert len(results) == 50

    counts = await feed_counts(store, **args)
    total, unread, unseen = await counts_from_list(store)
    assert (counts.total, counts.unread, counts.unseen) == (total, unread, unseen)
    assert total == 4  # n-0 archived

    # Every mark that changed an item is in the log, each after the one before:
    # no two reads without an unread between them, and the model is the log's fold.
    for nid in ids:
        types = [t for t, _ in await notification_log(store, nid)][2:]
        reads_and_unreads = [t for t in types if t in ("notification.read", "notification.unread")]
        assert all(a != b for a, b in itertools.pairwise(reads_and_unreads))
    live = await feed_tables(db)
    await rebuild_feed(store, retention=timedelta(days=90), now=now())
    assert await feed_tables(db) == live


# --- retention and rebuild ----------------------------------------------------------


async def test_retention_drops_old_items_from_the_model_only(db: Database) -> None:
    store = db.store
    await sent_inapp(store, ["n-old-1", "n-old-2"])
    await mark(store, instance_id="acme", user_id="user-ada", notification_id="n-old-1",
               action="read")  # fmt: skip
    async with db.pool.connection() as conn:  # these two were sent 100 days ago
        await conn.execute("UPDATE tidings.feed_items SET sent_at = sent_at - interval '100 days'")
    appended = await sent_inapp(store, ["n-new"])
    args: dict[str, Any] = {"instance_id": "acme", "user_id": "user-ada"}
    assert (await feed_counts(store, **args)).to_json() == {"total": 3, "unread": 2, "unseen": 2}

    dropped = await prune_feed(store, retention=timedelta(days=90), now=now())
    assert dropped == 2
    assert [i.notification_id for i in (await list_feed(store, **args)).items] == ["n-new"]
    assert (await feed_counts(store, **args)).to_json() == {"total": 1, "unread": 1, "unseen": 1}
    assert await prune_feed(store, retention=timedelta(days=90), now=now()) == 0
    # The log keeps them, and a mark of a dropped item changes no count.
    assert len(await notification_log(store, "n-old-2")) == 2
    async with db.pool.connection() as conn:
        row = await (
            await conn.execute("SELECT pruned_through FROM tidings.feed_counts")
        ).fetchone()
    assert row is not None and 0 < row[0] < appended[0].position
    with pytest.raises(FeedItemNotFound):
        await mark(store, notification_id="n-old-2", action="read", **args)


# --- audit ----------------------------------------------------------------------------

LOG_RULES = {"marks", "settled-once", "unknown-event-type", "unreadable-payload", "attempts"}


async def test_audit_verify_accepts_the_feeds_marks_and_flags_marks_around_it(
    db: Database,
) -> None:
    from tests.feed_helpers import inapp_requested
    from tidings.audit import LogAuditor
    from tidings.config import NotificationSettings
    from tidings.eventstore import NewEvent

    store = db.store
    await sent_inapp(store, ["n-1", "n-2"])
    args: dict[str, Any] = {"instance_id": "acme", "user_id": "user-ada"}
    for action in ("read", "unread", "read", "archive", "unarchive"):
        await mark(store, notification_id="n-1", action=action, **args)
    await read_all(store, **args)

    async def log_violations() -> set[tuple[str, str, int | None]]:
        report = await LogAuditor(db=db, settings=NotificationSettings()).verify()
        return {
            (v.rule, v.aggregate_id, v.sequence) for v in report.violations if v.rule in LOG_RULES
        }

    assert await log_violations() == set()

    def by_hand(nid: str, event_type: str, user_id: str = "user-ada") -> NewEvent:
        return NewEvent(instance_id="acme", aggregate_type="notification", aggregate_id=nid,
                        event_type=event_type, payload={"user_id": user_id})  # fmt: skip

    await store.append([inapp_requested("n-pending")])
    await store.append([
        by_hand("n-2", "notification.read"),  # read again: changes nothing
        by_hand("n-2", "notification.seen", user_id="user-bob"),  # another user's item
        by_hand("n-pending", "notification.read"),  # before any send
    ])  # fmt: skip
    assert await log_violations() == {
        ("marks", "n-2", 4), ("marks", "n-2", 5), ("marks", "n-pending", 2),
    }  # fmt: skip


async def test_marks_leave_a_notification_sent_in_listings_and_read_in_its_history(
    db: Database,
) -> None:
    from tidings.views.history import history
    from tidings.views.listing import NotificationFilter, list_notifications

    await sent_inapp(db.store, ["n-1"])
    await mark(db.store, instance_id="acme", user_id="user-ada", notification_id="n-1",
               action="read")  # fmt: skip
    listing = await list_notifications(db.pool, NotificationFilter(states=("sent",)), now=now())
    [row] = listing.rows
    assert (row.notification_id, row.state, row.sent_via) == ("n-1", "sent", "inapp")
    steps = [step.summary for step in await history(db.store, "n-1")]
    assert steps[-2].endswith("via inapp (provider id inapp-n-1): 'item n-1'")
    assert steps[-1] == "read in the feed of user user-ada"


async def test_projections_rebuild_feed_rebuilds_items_and_counts_from_the_log(
    db: Database, conninfo: str
) -> None:
    from tests.cli import clean_env, tidings

    await sent_inapp(db.store, ["n-1", "n-2"])
    await mark(db.store, instance_id="acme", user_id="user-ada", notification_id="n-2",
               action="archive")  # fmt: skip
    live = await feed_tables(db)
    async with db.pool.connection() as conn:
        await conn.execute("DELETE FROM tidings.feed_items")
        await conn.execute("UPDATE tidings.feed_counts SET unread = 7")
    result = tidings("projections", "rebuild", "feed", env=clean_env(TIDINGS_DATABASE_URL=conninfo))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "rebuilt feed: 2 items within inapp.retention"
    assert await feed_tables(db) == live


async def test_bulks_sending_to_the_same_users_in_opposite_orders_do_not_deadlock(
    db: Database,
) -> None:
    """Two workers' bulks (one append each) send to the same users in opposite orders."""
    from tests.feed_helpers import inapp_requested, inapp_sent

    users = [f"user-{i:02d}" for i in range(40)]
    for round_ in range(4):
        requests = [inapp_requested(f"n-{round_}-{side}-{u}", user_id=u)
                    for side in ("a", "b") for u in users]  # fmt: skip
        await db.store.append(requests)
        forward = [inapp_sent(f"n-{round_}-a-{u}", user_id=u) for u in users]
        backward = [inapp_sent(f"n-{round_}-b-{u}", user_id=u) for u in reversed(users)]
        await asyncio.gather(db.store.append(forward), db.store.append(backward))
    for user in users[:3]:
        counts = await feed_counts(db.store, instance_id="acme", user_id=user)
        assert (counts.total, counts.unread, counts.unseen) == (8, 8, 8)


async def test_a_send_and_its_marks_in_one_append_fold_as_in_a_rebuild(db: Database) -> None:
    from tests.feed_helpers import inapp_requested, inapp_sent
    from tidings.eventstore import NewEvent

    def marked(event_type: str) -> NewEvent:
        return NewEvent(instance_id="acme", aggregate_type="notification", aggregate_id="n-1",
                        event_type=event_type, payload={"user_id": "user-ada"})  # fmt: skip

    await db.store.append([
        inapp_requested("n-1"), inapp_sent("n-1"), marked("notification.read"),
        marked("notification.archived"),
    ])  # fmt: skip
    item = await get_item(db.store, instance_id="acme", user_id="user-ada", notification_id="n-1")
    assert item.read_at is not None and item.archived_at is not None
    counts = await feed_counts(db.store, instance_id="acme", user_id="user-ada")
    assert (counts.total, counts.unread, counts.unseen) == (0, 0, 0)
    live = await feed_tables(db)
    await rebuild_feed(db.store, retention=timedelta(days=90), now=now())
    assert await feed_tables(db) == live
