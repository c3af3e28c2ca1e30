"""POST /v1/events (append, all or nothing) and GET /v1/events (the log, NDJSON)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.auth import requires
from tidings.api.keys import Principal
from tidings.api.problems import FieldProblem, Problem, problem_responses
from tidings.api.producers import NUL_MESSAGE, nul_path, producer_problem
from tidings.api.state import ApiState, state_of
from tidings.eventstore import ConcurrencyError, EventQuery, NewEvent
from tidings.notification.redaction import redact_codes

router = APIRouter(prefix="/v1", tags=["events"], responses=problem_responses())

_ID = Field(min_length=1, max_length=200)
BIGINT_MAX = 2**63 - 1  # positions and sequences are PostgreSQL bigints


class EventIn(BaseModel):
    """One event, in the `tidings events append` envelope."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "aggregate_type": "user",
                    "aggregate_id": "user-ada",
                    "event_type": "user.human.otp.email.code.added",
                    "payload": {"code": {"plain": "123456"}, "expiry": "10m"},
                }
            ]
        },
    )

    instance_id: str | None = Field(
        default=None, min_length=1, max_length=200, description="Defaults to the key's instance."
    )
    aggregate_type: str = _ID
    aggregate_id: str = _ID
    event_type: str = _ID
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description='A code may be given as {"plain": "123456"}: it is encrypted with '
        "the active key before anything is stored, and never echoed.",
    )
    expected_sequence: int | None = Field(
        default=None,
        ge=0,
        le=BIGINT_MAX,
        description="The aggregate's last sequence as you saw it (0: a new aggregate).",
    )
    owner: str = Field(default="", max_length=200)
    creator: str = Field(default="", max_length=200)


class AppendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[EventIn] = Field(min_length=1)


class Appended(BaseModel):
    position: int
    sequence: int
    aggregate_type: str
    aggregate_id: str
    event_type: str


class AppendResponse(BaseModel):
    events: list[Appended]


@router.post(
    "/events",
    response_model=AppendResponse,
    status_code=201,
    summary="Append events, all in one transaction or none",
    responses=problem_responses((409, "An expected_sequence does not hold")),
)
async def append_events(
    body: AppendRequest,
    principal: Annotated[Principal, Depends(requires("events:write"))],
    api: Annotated[ApiState, Depends(state_of)],
) -> Response:
    if len(body.events) > api.settings.api.max_batch:
        raise Problem(
            413,
            f"{len(body.events)} events in one request; at most {api.settings.api.max_batch} "
            "(api.max_batch): split the batch",
        )
    problems: list[FieldProblem] = []
    events: list[NewEvent] = []
    for index, given in enumerate(body.events):
        where = f"events.{index}"
        if given.instance_id is not None and given.instance_id != principal.instance_id:
            raise Problem(
                403,
                f"{where}.instance_id: this key appends only to its own instance; "
                "leave instance_id out",
            )
        where_nul = nul_path(given.model_dump(exclude_none=True), where)
        if where_nul is not None:
            problems.append(FieldProblem(field=where_nul, message=NUL_MESSAGE))
            continue
        problem = producer_problem(
            aggregate_type=given.aggregate_type,
            aggregate_id=given.aggregate_id,
            event_type=given.event_type,
            payload=given.payload,
        )
        if problem is not None:
            problems.append(FieldProblem(field=f"{where}.event_type", message=problem))
            continue
        try:
            payload = _sealed_code(given.payload, api)
        except ValueError as exc:
            problems.append(FieldProblem(field=f"{where}.payload.code", message=str(exc)))
            continue
        events.append(
            NewEvent(
                instance_id=principal.instance_id,
                aggregate_type=given.aggregate_type,
                aggregate_id=given.aggregate_id,
                event_type=given.event_type,
                payload=payload,
                expected_sequence=given.expected_sequence,
                owner=given.owner,
                creator=given.creator or principal.label,
            )
        )
    if problems:
        summary = "; ".join(f"{p.field}: {p.message}" for p in problems[:3])
        raise Problem(422, f"nothing was appended: {summary}", errors=problems)
    try:
        stored = await api.appender.append(events)
    except ConcurrencyError as exc:
        where = f"events.{exc.index}: " if exc.index is not None else ""
        raise Problem(
            409,
            f"{where}{exc}; nothing was appended: read the aggregate and try again",
            title="Sequence conflict",
        ) from None
    # Written out here rather than returned as AppendResponse: FastAPI would validate
    # a returned model once more (about a tenth of the request's CPU, measured with
    # bench/api.py). The answer has AppendResponse's shape, which the OpenAPI shows.
    answer = {
        "events": [
            {
                "position": landed.position,
                "sequence": landed.sequence,
                "aggregate_type": event.aggregate_type,
                "aggregate_id": event.aggregate_id,
                "event_type": event.event_type,
            }
            for event, landed in zip(events, stored, strict=True)
        ]
    }
    return Response(json.dumps(answer), status_code=201, media_type="application/json")


def _sealed_code(payload: dict[str, Any], api: ApiState) -> dict[str, Any]:
    """The payload with a `{"plain": ...}` code encrypted by the active key."""
    code = payload.get("code")
    if not isinstance(code, dict) or "plain" not in code:
        return payload
    if set(code) != {"plain"} or not isinstance(code["plain"], str) or not code["plain"]:
        raise ValueError('give a plain code as {"plain": "123456"} and nothing else')
    if len(code["plain"]) > 256:
        raise ValueError("a code has at most 256 characters")
    return {**payload, "code": api.encrypt(code["plain"]).model_dump(mode="json")}


@router.get(
    "/events",
    summary="The log of the key's instance, as NDJSON, codes redacted",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {}},
            "description": "One event per line, in position order. Continue with "
            "after=<the last position>; the log is read only up to the point where no "
            "earlier event can still commit, so following it never skips one.",
        }
    },
)
async def read_events(
    principal: Annotated[Principal, Depends(requires("events:read"))],
    api: Annotated[ApiState, Depends(state_of)],
    after: Annotated[
        int, Query(ge=0, le=BIGINT_MAX, description="Only events after this position.")
    ] = 0,
    event_type: Annotated[
        list[str] | None, Query(description="Event types; a trailing * is a wildcard.")
    ] = None,
    aggregate_id: Annotated[list[str] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> StreamingResponse:
    query = EventQuery(
        instance_ids=(principal.instance_id,),
        event_types=tuple(event_type) if event_type else None,
        aggregate_ids=tuple(aggregate_id) if aggregate_id else None,
        position_after=after,
        limit=limit,
    )
    horizon = await api.db.store.horizon()
    # Read the page (at most `limit` events) before sending any of it: a client
    # that stops reading must not hold a database connection.
    page = [event async for event in api.db.store.stream(query, below=horizon, batch_size=1000)]

    async def lines() -> AsyncIterator[bytes]:
        for event in page:
            row = event.model_dump(mode="json")
            row["payload"] = redact_codes(event.payload)
            yield json.dumps(row, separators=(",", ":")).encode() + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")
