"""Who is asking for a feed: end users sign in with their platform's tokens.

Two ways, per instance (settings end_users.*, each overridable under
end_users.instances.<instance>):

- **JWT** (PyJWT). HS256 with the shared secret `jwt_secret`, or RS256/ES256
  with the keys published at `jwks_url` (fetched with httpx, cached for
  `jwks_cache`, fetched again when a token names a key id that is not among
  them, at most once per `jwks_min_refresh`). `exp` and `sub` are required;
  `iss` and `aud` are checked when `issuer` and `audience` are set. `sub` is
  the user id, the claim named by `instance_claim` the instance. The key is
  chosen by the token's algorithm, so an HS256 token is never checked against
  a public key (algorithm confusion) and `none` is never accepted.
- **HMAC of the user id** (Novu's subscriber hash, for setups without JWTs):
  the platform's backend signs the instance and user id with `hmac_secret`
  and hands the browser `hmac_token(...)`. It does not expire; rotating the
  secret revokes every such token.

Tokens come as `Authorization: Bearer <token>`, or as `?token=` where a
browser cannot set headers (EventSource, WebSocket): see `token_from`. Every
refusal is an AuthError with a short reason that is safe to show (no token, no
secret in it); a JWKS endpoint that cannot be reached is KeysUnavailable (the
server's problem, not the token's).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import httpx
import jwt
from jwt.types import Options

from tidings.config import EndUserInstanceSettings, EndUserSettings
from tidings.config.masking import mask_url
from tidings.feeds.errors import AuthError, FeedError

log = logging.getLogger("tidings.feeds.auth")

HMAC_PREFIX = "tidings-hmac"
_ASYMMETRIC = ("RS256", "ES256")


class KeysUnavailable(FeedError):
    """The keys that verify end users' tokens cannot be fetched; try again later."""

    fields: ClassVar[tuple[str, ...]] = ("jwks_url",)
    jwks_url: str | None


@dataclass(frozen=True)
class EndUser:
    """A signed-in end user: whose feed, in which instance."""

    instance_id: str
    user_id: str
    method: Literal["jwt", "hmac"]
    expires_at: datetime | None = None  # the last moment its token is accepted (exp + leeway)


def token_from(authorization: str | None, query_token: str | None) -> str | None:
    """The token of a request: `Authorization: Bearer ...`, else `?token=`."""
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return None
    return query_token or None


def _hmac_message(instance_id: str, user_id: str) -> bytes:
    return f"{instance_id}\n{user_id}".encode()


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(part: str) -> str:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode("utf-8")


def hmac_signature(secret: str, instance_id: str, user_id: str) -> str:
    """HMAC-SHA256 of "<instance>\\n<user id>" with the secret, hex: what the platform computes."""
    return hmac.new(
        secret.encode(), _hmac_message(instance_id, user_id), hashlib.sha256
    ).hexdigest()


def hmac_token(secret: str, instance_id: str, user_id: str) -> str:
    """The token a platform's backend hands its browser in the HMAC mode.

    `tidings-hmac.<base64url instance>.<base64url user id>.<hex signature>`.
    """
    signature = hmac_signature(secret, instance_id, user_id)
    return f"{HMAC_PREFIX}.{_b64(instance_id)}.{_b64(user_id)}.{signature}"


@dataclass
class _KeySet:
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    unnamed: list[jwt.PyJWK] = field(default_factory=list)
    fetched_at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class JwksCache:
    """The signing keys published at JWKS URLs, fetched with httpx and kept a while."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        max_age: float,
        min_refresh: float,
        monotonic: Any = time.monotonic,
    ) -> None:
        self._client = client
        self._max_age = max_age
        self._min_refresh = min_refresh
        self._monotonic = monotonic
        self._sets: dict[str, _KeySet] = {}
        self.fetches = 0

    async def key(self, url: str, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key for `kid` (or the one key of `alg` when the token names none)."""
        keys = self._sets.setdefault(url, _KeySet())
        now = self._monotonic()
        if now - keys.fetched_at > self._max_age:
            await self._refresh(url, keys, seen=keys.fetched_at)
        found = self._find(keys, kid, alg)
        if found is None and self._monotonic() - keys.fetched_at >= self._min_refresh:
            await self._refresh(url, keys, seen=keys.fetched_at)  # a new key: rotated
            found = self._find(keys, kid, alg)
        if found is None:
            raise AuthError(
                f"the token's key id {kid!r} is not among the keys at the JWKS URL",
                reason="unknown_key",
            )
        return found

    @staticmethod
    def _find(keys: _KeySet, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is not None:
            return keys.keys.get(kid)
        candidates = [
            k
            for k in [*keys.keys.values(), *keys.unnamed]
            if k.algorithm_name == alg or k.Algorithm is None
        ]
        return candidates[0] if len(candidates) == 1 else None

    async def _refresh(self, url: str, keys: _KeySet, *, seen: float) -> None:
        async with keys.lock:
            if keys.fetched_at != seen:
                return  # another request fetched them meanwhile
            self.fetches += 1
            try:
                response = await self._client.get(url, headers={"Accept": "application/json"})
                response.raise_for_status()
                document = response.json()
                key_set = jwt.PyJWKSet.from_dict(document)
            except (httpx.HTTPError, ValueError, jwt.PyJWKSetError) as exc:
                where = mask_url(url)
                log.warning(
                    "cannot fetch the end users' signing keys from %s: %s; tokens signed "
                    "with keys not cached are answered 503 until it answers: check that the "
                    "URL (end_users.jwks_url) is right and reachable from this process",
                    where, exc, extra={"jwks_url": where},
                )  # fmt: skip
                raise KeysUnavailable(
                    f"cannot fetch the signing keys from {where}: {type(exc).__name__}",
                    jwks_url=where,
                ) from exc
            keys.keys = {k.key_id: k for k in key_set.keys if k.key_id}
            keys.unnamed = [k for k in key_set.keys if not k.key_id]
            keys.fetched_at = self._monotonic()


class EndUserAuth:
    """Turns a token into an EndUser, or refuses it with AuthError."""

    def __init__(
        self, *, settings: EndUserSettings, client: httpx.AsyncClient | None = None
    ) -> None:
        self._settings = settings
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        self.jwks = JwksCache(
            client=self._client,
            max_age=settings.jwks_cache.total_seconds(),
            min_refresh=settings.jwks_min_refresh.total_seconds(),
        )

    async def close(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def authenticate(self, token: str | None) -> EndUser:
        """The end user the token stands for. Raises AuthError or KeysUnavailable."""
        if not token:
            raise AuthError(
                "no token: send Authorization: Bearer <token> (or ?token= for event streams)",
                reason="missing",
            )
        if token.startswith(HMAC_PREFIX + "."):
            return self._hmac(token)
        return await self._jwt(token)

    def _hmac(self, token: str) -> EndUser:
        parts = token.split(".")
        if len(parts) != 4:
            raise AuthError("malformed tidings-hmac token", reason="malformed")
        try:
            instance_id, user_id = _unb64(parts[1]), _unb64(parts[2])
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise AuthError("malformed tidings-hmac token", reason="malformed") from None
        if not instance_id or not user_id or "\n" in instance_id or "\n" in user_id:
            raise AuthError("malformed tidings-hmac token", reason="malformed")
        secret = self._settings.for_instance(instance_id).hmac_secret
        if secret is None:
            raise AuthError("HMAC tokens are not accepted for this instance", reason="mode_off")
        expected = hmac_signature(secret.get_secret_value(), instance_id, user_id)
        if not hmac.compare_digest(expected, parts[3]):
            raise AuthError("the token's signature does not match", reason="bad_signature")
        return EndUser(instance_id=instance_id, user_id=user_id, method="hmac")

    async def _jwt(self, token: str) -> EndUser:
        try:
            parsed = jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("the token is not a JWT", reason="malformed") from None
        header, unverified = parsed["header"], parsed["payload"]  # parsed once, to pick the key
        claim = self._settings.instance_claim
        instance_id = unverified.get(claim)
        if not isinstance(instance_id, str) or not instance_id:
            raise AuthError(f"the token has no {claim!r} claim (the instance)", reason="claims")
        # The instance read before verifying only picks the keys that verify it.
        settings = self._settings.for_instance(instance_id)
        alg = header.get("alg")
        key = await self._key(settings, alg, header.get("kid"))
        options: Options = {"require": ["exp", "sub"], "verify_aud": settings.audience is not None}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=self._settings.leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired", reason="expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("the token is for another audience", reason="audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("the token is from another issuer", reason="issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"the token has no {exc.claim!r} claim", reason="claims") from None
        except jwt.InvalidSignatureError:
            raise AuthError(
                "the token's signature does not match", reason="bad_signature"
            ) from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"the token is not valid: {exc}", reason="invalid") from None
        user_id = claims.get("sub")
        if not isinstance(user_id, str) or not user_id:
            raise AuthError("the token's sub (the user id) is empty", reason="claims")
        exp = claims.get("exp")  # accepted until exp + leeway: a stream lives as long
        leeway = self._settings.leeway
        expires = (
            datetime.fromtimestamp(exp, UTC) + leeway if isinstance(exp, int | float) else None
        )
        return EndUser(instance_id=instance_id, user_id=user_id, method="jwt", expires_at=expires)

    async def _key(self, settings: EndUserInstanceSettings, alg: Any, kid: Any) -> Any:
        if alg == "HS256":
            if settings.jwt_secret is None:
                raise AuthError("HS256 tokens are not accepted for this instance", reason="alg")
            return settings.jwt_secret.get_secret_value()
        if alg in _ASYMMETRIC:
            if settings.jwks_url is None:
                raise AuthError(f"{alg} tokens are not accepted for this instance", reason="alg")
            found = await self.jwks.key(settings.jwks_url, kid if isinstance(kid, str) else None,
                                        str(alg))  # fmt: skip
            return found.key
        raise AuthError(
            f"the token's algorithm {alg!r} is not accepted (HS256, RS256 or ES256)", reason="alg"
        )
