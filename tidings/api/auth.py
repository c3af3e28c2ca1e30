"""`Authorization: Bearer <key>` on every /v1/ route, and the scope each one needs.

A missing, unknown or revoked key is 401; a key without the route's scope is
403. A key only ever sees its own instance: data of another instance answers
as if it did not exist (404), or 403 where the request names the instance, so
no answer tells whether another instance exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tidings.api.keys import ApiKeys, Principal
from tidings.api.problems import Problem

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key of one instance: `tidings apikeys create --instance ID`.",
)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tidings"'}


def requires(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the calling key, which must hold `scope`."""

    async def principal(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Problem(
                401,
                "send an API key as `Authorization: Bearer <key>` "
                "(create one with `tidings apikeys create --instance ID`)",
                headers=_CHALLENGE,
            )
        keys: ApiKeys = request.app.state.api.keys
        found = await keys.principal(credentials.credentials)
        if found is None:
            raise Problem(
                401, "the API key is unknown or revoked", headers=_CHALLENGE, title="Unauthorized"
            )
        if scope not in found.scopes:
            raise Problem(
                403,
                f"this key lacks the scope {scope}; create a key with "
                f"`--scope {scope}` (it has: {', '.join(sorted(found.scopes)) or 'none'})",
            )
        return found

    return principal
