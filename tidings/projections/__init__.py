"""Read models and process managers fed by the event log."""

from __future__ import annotations

from tidings.clock import Clock, utc_now
from tidings.config import Settings
from tidings.eventstore import Database
from tidings.projections.base import InvalidEvent, Projection
from tidings.projections.leader import LeaderLock
from tidings.projections.projector import ProjectionStatus, Projector
from tidings.projections.requests import RequestsProjection
from tidings.projections.users import (
    UsersProjection,
    notify_user,
    notify_users,
    users_checkpoint,
)


def default_projections(
    db: Database, settings: Settings, *, clock: Clock = utc_now
) -> list[Projection]:
    """Every projection tidings runs, in the order they see each event.

    users comes first, so a request sees the user as of its own event.
    """
    return [
        UsersProjection(),
        RequestsProjection(store=db.store, settings=settings.notifications, clock=clock),
    ]


__all__ = [
    "Clock",
    "InvalidEvent",
    "LeaderLock",
    "Projection",
    "ProjectionStatus",
    "Projector",
    "RequestsProjection",
    "UsersProjection",
    "default_projections",
    "notify_user",
    "notify_users",
    "users_checkpoint",
    "utc_now",
]
