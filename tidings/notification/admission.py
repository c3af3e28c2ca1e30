"""What a producer may append: the one check every door runs before the store.

`events append` and the HTTP API (`POST /v1/events`) call `check_producer_events`
on what a producer sends, so both refuse the same events with the same words:

- **Only producer events.** Producers append `user.*` events on `user`
  aggregates and `session.*` events on `session` aggregates (docs/events.md).
  `notification.*` events, and the `*.sent` events tidings appends on a user or
  session once a message went out, are written only by tidings' own code
  paths: a forged `notification.sent` would settle a notification that was
  never sent. An operator's deliberate repair passes `allow_internal`, and the
  door logs it.
- **Bounded sizes** (settings `events.*`): ids (instance_id, aggregate_id,
  owner, creator, and every payload field named `*_id`), types, and the
  payload's JSON. Past them an event could break an index of the store (a
  10,000-character user id is one), so it is refused at the door, naming the
  field and the limit.
- **Text PostgreSQL can store**: no NUL character (`\\u0000`) in any string.
- **An instance id is a name**, never a path: letters, digits and `. _ -`
  (not first), at most 200 characters (it names the instance's folder of
  template overrides).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from tidings.config import EventSettings
from tidings.errors import TidingsError
from tidings.eventstore.models import NewEvent
from tidings.notification.rendering import INSTANCE_ID
from tidings.notification.sources import MESSAGE_SOURCES

PRODUCER_AGGREGATES = ("user", "session")
INTERNAL_PREFIXES = ("notification.",)
# Appended by tidings on the source aggregate when a message went out.
INTERNAL_SENT_TYPES = frozenset(source.sent_event_type for source in MESSAGE_SOURCES.values())


class EventRefused(TidingsError):
    """A producer may not append this event.

    `field` names what is wrong (`payload.user_id`, `event_type`), `limit` the
    setting that bounds it when a size is over, and `index` the event's place
    in the batch.
    """

    fields: ClassVar[tuple[str, ...]] = ("field", "limit", "index")
    field: str | None
    limit: str | None
    index: int | None


def is_internal(event_type: str) -> bool:
    """Whether only tidings itself writes events of this type."""
    return event_type.startswith(INTERNAL_PREFIXES) or event_type in INTERNAL_SENT_TYPES


def check_producer_events(
    events: Sequence[NewEvent], *, limits: EventSettings, allow_internal: bool = False
) -> None:
    """Raise EventRefused for the first event a producer may not append (see the module)."""
    for index, event in enumerate(events):
        problem = producer_event_problem(event, limits=limits, allow_internal=allow_internal)
        if problem is not None:
            raise EventRefused(
                problem.message, field=problem.field, limit=problem.limit, index=index
            )


def producer_event_problem(
    event: NewEvent, *, limits: EventSettings, allow_internal: bool = False
) -> EventRefused | None:
    """What is wrong with one event, or None; for doors that report every event at once."""
    for field, value in _strings(event):
        if "\x00" in value:
            return EventRefused(
                f"{field} holds a NUL character (\\u0000), which PostgreSQL cannot store as text",
                field=field,
            )
    if not INSTANCE_ID.fullmatch(event.instance_id):
        return EventRefused(
            f"instance_id {event.instance_id[:80]!r} is not an instance id: letters, digits "
            "and . _ - (not first), at most 200 characters",
            field="instance_id",
        )
    for field in ("aggregate_type", "event_type"):
        refused = _over(field, getattr(event, field), limits.max_type_length, "max_type_length")
        if refused is not None:
            return refused
    for field, value in _ids(event):
        refused = _over(field, value, limits.max_id_length, "max_id_length")
        if refused is not None:
            return refused
    size = len(json.dumps(event.payload, ensure_ascii=False, separators=(",", ":")).encode())
    if size > limits.max_payload_bytes:
        return EventRefused(
            f"payload is {size} bytes as JSON; at most {limits.max_payload_bytes} "
            "(events.max_payload_bytes)",
            field="payload",
            limit="events.max_payload_bytes",
        )
    if not allow_internal:
        return _producer_type_problem(event)
    return None


def _producer_type_problem(event: NewEvent) -> EventRefused | None:
    if is_internal(event.event_type):
        return EventRefused(
            f"event_type {event.event_type} is written only by tidings itself, never by a "
            "producer (an operator's repair: `tidings events append --allow-internal`)",
            field="event_type",
        )
    kind = event.event_type.split(".", 1)[0]
    if kind not in PRODUCER_AGGREGATES or "." not in event.event_type:
        return EventRefused(
            f"event_type {event.event_type} is not a producer event: producers append user.* "
            "and session.* events (docs/events.md)",
            field="event_type",
        )
    if event.aggregate_type != kind:
        return EventRefused(
            f"aggregate_type {event.aggregate_type} does not fit event_type "
            f"{event.event_type}: {kind}.* events go on {kind} aggregates",
            field="aggregate_type",
        )
    return None


def _over(field: str, value: str, most: int, setting: str) -> EventRefused | None:
    if len(value) <= most:
        return None
    return EventRefused(
        f"{field} is {len(value)} characters long; at most {most} (events.{setting})",
        field=field,
        limit=f"events.{setting}",
    )


def _ids(event: NewEvent) -> Iterator[tuple[str, str]]:
    yield "instance_id", event.instance_id
    yield "aggregate_id", event.aggregate_id
    yield "owner", event.owner
    yield "creator", event.creator
    for path, key, value in _walk(event.payload, "payload"):
        if isinstance(value, str) and (key == "id" or key.endswith("_id")):
            yield path, value


def _strings(event: NewEvent) -> Iterator[tuple[str, str]]:
    for field in (
        "instance_id",
        "aggregate_type",
        "aggregate_id",
        "event_type",
        "owner",
        "creator",
    ):
        yield field, getattr(event, field)
    for path, key, value in _walk(event.payload, "payload"):
        yield f"{path} (a key)", key
        if isinstance(value, str):
            yield path, value


def _walk(value: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every member of every object in a JSON value, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}"
            yield here, str(key), item
            yield from _walk(item, here)
    elif isinstance(value, list):
        for number, item in enumerate(value):
            here = f"{path}[{number}]"
            if isinstance(item, str):
                yield here, "", item
            yield from _walk(item, here)
