"""The base of tidings' own pydantic models: frozen, and no field it does not know."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FrozenModel(BaseModel):
    """Immutable once built; an unknown field is an error, never silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid")
