"""GET /v1/presence/{user_id}: which serve processes hold live feed connections of a user.

For operators (an API key with notifications:read, of the user's instance):
"is this user's browser connected, and to which process, since when?" Every
serve process writes its own connections to the shared presence
(tidings.feeds.presence), so any of them answers for all. A connection that
just opened or closed shows within a fraction of a second; a process that died
disappears within three inapp.presence_heartbeat.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel

from tidings.api.auth import requires
from tidings.api.keys import Principal
from tidings.api.problems import Problem, problem_responses
from tidings.api.state import ApiState, state_of
from tidings.eventstore import DatabaseUnavailable
from tidings.feeds.presence import presence_of

router = APIRouter(
    prefix="/v1",
    tags=["presence"],
    responses=problem_responses((503, "The database is unavailable")),
)


class ProcessConnections(BaseModel):
    process_id: str
    host: str
    pid: int
    connections: int
    transports: dict[str, int]
    since: datetime
    process_started_at: datetime
    heartbeat_at: datetime


class PresenceView(BaseModel):
    instance_id: str
    user_id: str
    connected: bool
    connections: int
    processes: list[ProcessConnections]


@router.get(
    "/presence/{user_id}",
    response_model=PresenceView,
    summary="Where an end user is connected live: which serve processes, how many, since when",
)
async def get_presence(
    user_id: Annotated[str, Path(max_length=200)],
    principal: Annotated[Principal, Depends(requires("notifications:read"))],
    api: Annotated[ApiState, Depends(state_of)],
) -> PresenceView:
    """The user's live connections (SSE, WebSocket, long-polls waiting) per serve process.

    `connections` sums them; `transports` splits a process's by kind; `since`
    is when the oldest of them opened. A user with none is `connected: false`
    with no processes (not 404: presence is a state, not a resource).
    """
    try:
        found = await presence_of(api.db.store, principal.instance_id, user_id)
    except DatabaseUnavailable as exc:
        raise Problem(
            503, f"the database is unavailable ({exc}); try again", headers={"Retry-After": "2"}
        ) from None
    processes = [ProcessConnections(**p.to_json()) for p in found]
    total = sum(p.connections for p in processes)
    return PresenceView(
        instance_id=principal.instance_id,
        user_id=user_id,
        connected=total > 0,
        connections=total,
        processes=processes,
    )
