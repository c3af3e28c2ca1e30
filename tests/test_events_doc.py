"""docs/events.md agrees with the event models it documents.

Every event type tidings reads has one section with at least one example; each
example is a complete `tidings events append` line whose payload validates with
the event's model; the field tables and the table of message sources list what
the models say; the notification.requested example validates too. The checks
return the problems they find, so the last tests can show that a drifted doc
fails them. No database is needed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tidings.eventstore import NewEvent
from tidings.notification.requests import REQUESTED, NotificationRequested, notification_id
from tidings.notification.sources import MESSAGE_SOURCES, USER_EVENTS, SourcePayload

DOC = Path(__file__).resolve().parent.parent / "docs" / "events.md"
EVENT_TYPES = sorted(set(USER_EVENTS) | set(MESSAGE_SOURCES))
ENVELOPE = ("instance_id", "aggregate_type", "aggregate_id", "event_type", "payload")
MESSAGE_TABLE_SECTION = "Events that ask for a message"

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*$")
_EVENT_HEADING = re.compile(r"^`([a-z0-9_.]+)`$")
_TABLE_ROW = re.compile(r"^\|(.*)\|\s*$")
_NOTIFICATION_AGGREGATE = re.compile(r"`notification`/`([0-9a-f-]{36})`")


@dataclass(frozen=True)
class Section:
    """A heading of the doc and the lines up to the next heading."""

    title: str
    lines: tuple[str, ...]

    @property
    def event_type(self) -> str | None:
        match = _EVENT_HEADING.match(self.title)
        return match.group(1) if match else None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def json_blocks(self) -> list[str]:
        """The contents of the section's ```json blocks."""
        blocks: list[str] = []
        current: list[str] | None = None
        for line in self.lines:
            if current is None:
                if line.strip() == "```json":
                    current = []
            elif line.strip() == "```":
                blocks.append("\n".join(current))
                current = None
            else:
                current.append(line)
        return blocks

    def table_rows(self) -> list[list[str]]:
        """The cells of the section's table rows, without the header and rule rows."""
        rows = []
        for line in self.lines:
            match = _TABLE_ROW.match(line.strip())
            if match is None:
                continue
            cells = [cell.strip() for cell in match.group(1).split("|")]
            if cells[0].startswith("`"):
                rows.append(cells)
        return rows


def parse_sections(text: str) -> list[Section]:
    """The doc's sections; a `#` inside a fenced block is not a heading."""
    sections: list[Section] = []
    title, fenced = "", False
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else _HEADING.match(line)
        if heading is None:
            lines.append(line)
            continue
        sections.append(Section(title, tuple(lines)))
        title, lines = heading.group(2), []
    sections.append(Section(title, tuple(lines)))
    return sections


def event_sections(text: str) -> dict[str, list[Section]]:
    """The sections titled with an event type, by event type."""
    found: dict[str, list[Section]] = {}
    for section in parse_sections(text):
        if section.event_type is not None:
            found.setdefault(section.event_type, []).append(section)
    return found


def section_titled(text: str, title: str) -> Section | None:
    return next((s for s in parse_sections(text) if s.title == title), None)


def payload_models(event_type: str) -> list[type[SourcePayload]]:
    """Every model that reads this event type's payload (user.domain.claimed has two)."""
    models: list[type[SourcePayload]] = []
    if event_type in USER_EVENTS:
        models.append(USER_EVENTS[event_type])
    if event_type in MESSAGE_SOURCES:
        models.append(MESSAGE_SOURCES[event_type].payload)
    return models


def unquote(cell: str) -> str:
    return cell.strip().strip("`")


# --- the checks: each returns what is wrong, empty when the doc is right ------------


def coverage_problems(text: str) -> list[str]:
    """(a) every event type has exactly one section with at least one example."""
    found = event_sections(text)
    problems = [
        f"section for {t} that tidings does not read" for t in found if t not in EVENT_TYPES
    ]
    for event_type in EVENT_TYPES:
        sections = found.get(event_type, [])
        if len(sections) != 1:
            problems.append(f"{event_type}: {len(sections)} sections, expected 1")
        elif not sections[0].json_blocks():
            problems.append(f"{event_type}: no ```json example")
    return problems


def example_problems(event_type: str, block: str) -> list[str]:
    """(b) one example: a one-line append line of this type whose payload validates."""
    where = f"{event_type} example"
    if len(block.splitlines()) != 1:
        return [f"{where}: not on one line, so it cannot be piped to `events append -`"]
    try:
        line = json.loads(block)
    except json.JSONDecodeError as exc:
        return [f"{where}: not JSON ({exc})"]
    if not isinstance(line, dict):
        return [f"{where}: not a JSON object"]
    problems = [f"{where}: no {key}" for key in ENVELOPE if key not in line]
    if problems:
        return problems
    try:
        NewEvent.model_validate(line)
    except ValidationError as exc:
        return [f"{where}: not an append line: {exc}"]
    if line["event_type"] != event_type:
        problems.append(f"{where}: event_type is {line['event_type']}")
    expected_aggregate = "session" if event_type.startswith("session.") else "user"
    if line["aggregate_type"] != expected_aggregate:
        problems.append(f"{where}: aggregate_type is {line['aggregate_type']}")
    for model in payload_models(event_type):
        problems.extend(payload_problems(where, model, line["payload"]))
    return problems


def payload_problems(where: str, model: type[SourcePayload], payload: Any) -> list[str]:
    # The models ignore unknown fields, so a misspelled field would pass unnoticed.
    unknown = sorted(set(payload) - set(model.model_fields))
    problems = [f"{where}: {model.__name__} has no field {name}" for name in unknown]
    try:
        model.model_validate(payload)
    except ValidationError as exc:
        problems.append(f"{where}: invalid {model.__name__} payload: {exc}")
    return problems


def field_table_problems(event_type: str, section: Section) -> list[str]:
    """The section's field table names the model's fields and which are required."""
    documented = {unquote(row[0]): row for row in section.table_rows()}
    problems = []
    for model in payload_models(event_type):
        fields = model.model_fields
        problems += [
            f"{event_type}: field {n} is not in the table" for n in fields.keys() - documented
        ]
        problems += [
            f"{event_type}: {n} is not a field of {model.__name__}"
            for n in documented.keys() - fields
        ]
        for name, info in fields.items():
            row = documented.get(name)
            if row is not None and (len(row) < 3 or (row[2] == "required") != info.is_required()):
                problems.append(f"{event_type}: field {name} required is {info.is_required()}")
    return problems


def message_table_problems(text: str) -> list[str]:
    """The table of message sources says what MESSAGE_SOURCES says."""
    section = section_titled(text, MESSAGE_TABLE_SECTION)
    if section is None:
        return [f"no section {MESSAGE_TABLE_SECTION!r}"]
    rows = {unquote(row[0]): [unquote(cell) for cell in row[1:]] for row in section.table_rows()}
    problems = [
        f"message table: {t} is not a message source" for t in rows.keys() - MESSAGE_SOURCES
    ]
    for event_type, source in MESSAGE_SOURCES.items():
        expected = [
            source.message_type,
            source.channel or "notification_type",
            source.sent_event_type,
            "yes" if source.unverified_channel else "no",
            "yes" if source.is_otp else "no",
            f"notifications.{source.setting}" if source.setting else "—",
        ]
        if rows.get(event_type) != expected:
            problems.append(
                f"message table: {event_type} is {rows.get(event_type)}, not {expected}"
            )
    return problems


def notification_problems(text: str) -> list[str]:
    """(c) the notification.requested example validates and matches its source event."""
    section = next((s for s in parse_sections(text) if f"`{REQUESTED}`" in s.title), None)
    if section is None or not section.json_blocks():
        return [f"no {REQUESTED} section with a ```json example"]
    problems = []
    for block in section.json_blocks():
        try:
            request = NotificationRequested.model_validate_json(block).request
        except ValidationError as exc:
            problems.append(f"{REQUESTED} example: {exc}")
            continue
        if request.source is None:
            problems.append(f"{REQUESTED} example: no source event")
            continue
        source = MESSAGE_SOURCES.get(request.source.event_type)
        if source is None:
            problems.append(f"{REQUESTED} example: {request.source.event_type} asks for nothing")
            continue
        made = (request.message_type, request.sent_event_type, request.is_otp)
        if made != (source.message_type, source.sent_event_type, source.is_otp):
            problems.append(f"{REQUESTED} example: {made} is not what {source.event_type} asks")
        if request.unverified_channel != source.unverified_channel:
            problems.append(f"{REQUESTED} example: unverified_channel disagrees with its source")
        problems += notification_id_problems(text, section, request.source.model_dump())
    return problems


def notification_id_problems(text: str, section: Section, source: dict[str, Any]) -> list[str]:
    """The notification id the doc names is the one derived from the source example."""
    examples = event_sections(text).get(source["event_type"], [])
    lines = [json.loads(b) for s in examples for b in s.json_blocks()]
    line = next((ln for ln in lines if ln.get("aggregate_id") == source["aggregate_id"]), None)
    if line is None:
        return [f"{REQUESTED} example: no {source['event_type']} example it was made from"]
    expected = notification_id(
        instance_id=line["instance_id"],
        aggregate_type=source["aggregate_type"],
        aggregate_id=source["aggregate_id"],
        sequence=source["sequence"],
    )
    named = _NOTIFICATION_AGGREGATE.findall(section.text)
    if named != [expected]:
        return [f"{REQUESTED} example: the doc names notification ids {named}, not {expected}"]
    return []


# --- the doc as it is --------------------------------------------------------------


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_every_event_type_has_one_section_with_an_example(doc: str) -> None:
    assert coverage_problems(doc) == []


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_examples_are_append_lines_with_valid_payloads(doc: str, event_type: str) -> None:
    problems = []
    for section in event_sections(doc).get(event_type, []):
        for block in section.json_blocks():
            problems += example_problems(event_type, block)
    assert problems == []


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_field_tables_match_the_models(doc: str, event_type: str) -> None:
    problems = []
    for section in event_sections(doc).get(event_type, []):
        problems += field_table_problems(event_type, section)
    assert problems == []


def test_message_table_matches_message_sources(doc: str) -> None:
    assert message_table_problems(doc) == []


def test_notification_requested_example_is_valid(doc: str) -> None:
    assert notification_problems(doc) == []


# --- the checks catch a drifted doc -------------------------------------------------


def without_section(text: str, event_type: str) -> str:
    """The doc with one event type's section (heading to next heading) cut out."""
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        if _HEADING.match(line):
            skipping = line.endswith(f"`{event_type}`")
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def changed(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the doc no longer holds {old!r} once"
    return text.replace(old, new)


def examples_of(text: str, event_type: str) -> list[str]:
    problems = []
    for section in event_sections(text).get(event_type, []):
        problems += [p for b in section.json_blocks() for p in example_problems(event_type, b)]
    return problems


def test_a_missing_event_type_fails(doc: str) -> None:
    problems = coverage_problems(without_section(doc, "user.human.phone.removed"))
    assert problems == ["user.human.phone.removed: 0 sections, expected 1"]


def test_an_event_type_documented_twice_fails(doc: str) -> None:
    twice = doc + "\n### `user.removed`\n\n```json\n{}\n```\n"
    assert coverage_problems(twice) == ["user.removed: 2 sections, expected 1"]


def test_an_invalid_payload_fails(doc: str) -> None:
    empty = changed(doc, '"username": "ada.lovelace"', '"username": ""')
    assert examples_of(empty, "user.username.changed")


def test_a_misspelled_payload_field_fails(doc: str) -> None:
    typo = changed(doc, '"email_verified": true', '"email_verifed": true')
    assert examples_of(typo, "user.human.added") == [
        "user.human.added example: HumanAdded has no field email_verifed"
    ]


def test_a_field_missing_from_a_table_fails(doc: str) -> None:
    section = event_sections(doc)["user.human.password.code.added"][0]
    cut = Section(
        section.title, tuple(ln for ln in section.lines if "`notification_type` |" not in ln)
    )
    assert field_table_problems("user.human.password.code.added", cut) == [
        "user.human.password.code.added: field notification_type is not in the table"
    ]


def test_a_wrong_message_table_fails(doc: str) -> None:
    wrong = changed(
        doc, "| `user.domain.claimed.sent` | no |", "| `user.domain.claimed.sent` | yes |"
    )
    assert len(message_table_problems(wrong)) == 1


def test_an_invalid_notification_requested_example_fails(doc: str) -> None:
    fax = changed(doc, '"channel": "email",\n', '"channel": "fax",\n')
    assert notification_problems(fax)
