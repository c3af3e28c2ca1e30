"""End users' tokens: HS256, JWKS (RS256/ES256, rotation), issuer/audience, per instance, HMAC."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.http_peer import HttpPeer, Reply, serve_http
from tidings.config import EndUserInstanceSettings, EndUserSettings, Settings
from tidings.feeds.end_users import (
    EndUserAuth,
    KeysUnavailable,
    hmac_token,
    token_from,
)
from tidings.feeds.errors import AuthError

SECRET = "a-shared-secret-of-thirty-two-bytes!"


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "user-ada", "instance": "acme", "exp": int(time.time()) + 300}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
async def auth_for() -> AsyncIterator[Any]:
    made: list[EndUserAuth] = []

    def make(**settings: Any) -> EndUserAuth:
        made.append(EndUserAuth(settings=EndUserSettings(**settings)))
        return made[-1]

    yield make
    for auth in made:
        await auth.close()


async def refused(auth: EndUserAuth, token: str | None) -> AuthError:
    with pytest.raises(AuthError) as caught:
        await auth.authenticate(token)
    return caught.value


async def test_hs256_tokens_name_the_user_and_the_instance(auth_for: Any) -> None:
    auth = auth_for(jwt_secret=SECRET)
    user = await auth.authenticate(jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert (user.instance_id, user.user_id, user.method) == ("acme", "user-ada", "jwt")
    assert user.expires_at is not None

    assert (await refused(auth, None)).reason == "missing"
    assert (await refused(auth, "not-a-jwt")).reason == "malformed"
    wrong = jwt.encode(claims(), "another-secret-another-secret-xx", algorithm="HS256")
    assert (await refused(auth, wrong)).reason == "bad_signature"
    expired = jwt.encode(claims(exp=int(time.time()) - 120), SECRET, algorithm="HS256")
    assert (await refused(auth, expired)).reason == "expired"
    no_exp = jwt.encode(claims(exp=None), SECRET, algorithm="HS256")
    error = await refused(auth, no_exp)
    assert error.reason == "claims" and "'exp'" in str(error)
    no_instance = jwt.encode(claims(instance=None), SECRET, algorithm="HS256")
    assert "'instance' claim" in str(await refused(auth, no_instance))
    unsigned = jwt.encode(claims(), "", algorithm="none")
    assert (await refused(auth, unsigned)).reason == "alg"
    assert SECRET not in str(await refused(auth, wrong))


async def test_issuer_audience_and_the_instance_claim_are_checked_when_set(auth_for: Any) -> None:
    auth = auth_for(
        jwt_secret=SECRET, issuer="https://login.example", audience="inbox", instance_claim="tid"
    )
    good = claims(iss="https://login.example", aud="inbox", tid="acme", instance=None)
    assert (await auth.authenticate(jwt.encode(good, SECRET, algorithm="HS256"))).instance_id == (
        "acme"
    )
    for bad, reason in (
        ({**good, "iss": "https://evil.example"}, "issuer"),
        ({**good, "aud": "admin"}, "audience"),
        ({k: v for k, v in good.items() if k != "iss"}, "claims"),
    ):
        assert (await refused(auth, jwt.encode(bad, SECRET, algorithm="HS256"))).reason == reason


async def test_each_instance_may_have_its_own_secret(auth_for: Any) -> None:
    globex_secret = "globex-own-secret-globex-own-secret"
    auth = auth_for(
        jwt_secret=SECRET,
        instances={"globex": EndUserInstanceSettings(jwt_secret=globex_secret, audience="g")},
    )
    acme = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert (await auth.authenticate(acme)).instance_id == "acme"
    globex = jwt.encode(claims(instance="globex", aud="g"), globex_secret, algorithm="HS256")
    assert (await auth.authenticate(globex)).instance_id == "globex"
    # A token that claims globex but is signed with the default secret is refused.
    forged = jwt.encode(claims(instance="globex", aud="g"), SECRET, algorithm="HS256")
    assert (await refused(auth, forged)).reason == "bad_signature"


def _jwks(*keys: tuple[str, Any]) -> Reply:
    document = []
    for kid, key in keys:
        jwk = (
            RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            if isinstance(key, rsa.RSAPrivateKey)
            else ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        )
        document.append({**jwk, "kid": kid, "use": "sig"})
    return Reply.json({"keys": document})


@pytest.fixture
def jwks_server() -> Any:
    with serve_http() as peer:
        yield peer


async def test_jwks_keys_verify_rs256_and_es256_and_are_fetched_again_for_a_new_kid(
    jwks_server: HttpPeer, auth_for: Any
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks_server.default = _jwks(("r1", rsa_key), ("e1", ec_key))
    auth = auth_for(jwks_url=f"{jwks_server.url}/keys", jwks_min_refresh=timedelta(0))

    rs = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "r1"})
    es = jwt.encode(claims(sub="user-bob"), ec_key, algorithm="ES256", headers={"kid": "e1"})
    assert (await auth.authenticate(rs)).user_id == "user-ada"
    assert (await auth.authenticate(es)).user_id == "user-bob"
    assert auth.jwks.fetches == 1  # cached

    # The platform rotates: a token with a new kid fetches the keys again.
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_server.default = _jwks(("r2", new_key))
    rotated = jwt.encode(claims(), new_key, algorithm="RS256", headers={"kid": "r2"})
    assert (await auth.authenticate(rotated)).user_id == "user-ada"
    assert auth.jwks.fetches == 2
    unknown = jwt.encode(claims(), new_key, algorithm="RS256", headers={"kid": "nope"})
    assert (await refused(auth, unknown)).reason == "unknown_key"
    # An HS256 token is never checked against the public keys (algorithm confusion),
    assert (await refused(auth, jwt.encode(claims(), "x" * 32, algorithm="HS256"))).reason == (
        "alg"
    )
    # and a token signed by another key under a known kid does not verify.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "r2"})
    assert (await refused(auth, forged)).reason == "bad_signature"
    assert all(r.path == "/keys" for r in jwks_server.requests)


async def test_an_unknown_kid_fetches_at_most_once_per_min_refresh(
    jwks_server: HttpPeer, auth_for: Any
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_server.default = _jwks(("r1", key))
    auth = auth_for(jwks_url=jwks_server.url, jwks_min_refresh=timedelta(minutes=5))
    for _ in range(5):
        forged = jwt.encode(claims(), key, algorithm="RS256", headers={"kid": "forged"})
        assert (await refused(auth, forged)).reason == "unknown_key"
    assert auth.jwks.fetches == 1


async def test_an_unreachable_jwks_url_is_the_servers_problem_not_the_tokens(
    auth_for: Any,
) -> None:
    with serve_http(Reply(503)) as down:
        auth = auth_for(jwks_url=f"http://user:pw@{down.url.removeprefix('http://')}/keys")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode(claims(), key, algorithm="RS256", headers={"kid": "r1"})
        with pytest.raises(KeysUnavailable) as caught:
            await auth.authenticate(token)
    assert "pw" not in str(caught.value)


async def test_the_hmac_mode_signs_instance_and_user(auth_for: Any) -> None:
    auth = auth_for(
        hmac_secret="hmac-secret-hmac-secret",
        instances={"globex": EndUserInstanceSettings(hmac_secret="globex-hmac-secret")},
    )
    token = hmac_token("hmac-secret-hmac-secret", "acme", "user-ada")
    user = await auth.authenticate(token)
    assert (user.instance_id, user.user_id, user.method) == ("acme", "user-ada", "hmac")
    # Another user's or another instance's id under the same signature is refused.
    _, instance, _, signature = token.split(".")
    other_user = f"tidings-hmac.{instance}.dXNlci1ib2I.{signature}"
    assert (await refused(auth, other_user)).reason == "bad_signature"
    globex = hmac_token("hmac-secret-hmac-secret", "globex", "user-ada")
    assert (await refused(auth, globex)).reason == "bad_signature"
    assert (await auth.authenticate(hmac_token("globex-hmac-secret", "globex", "u"))).user_id == "u"
    assert (await refused(auth, "tidings-hmac.x.y")).reason == "malformed"
    off = auth_for(jwt_secret=SECRET)
    assert (await refused(off, token)).reason == "mode_off"


def test_the_token_comes_as_a_bearer_header_or_a_query_parameter() -> None:
    assert token_from("Bearer abc", None) == "abc"
    assert token_from("bearer  abc ", "q") == "abc"
    assert token_from(None, "q") == "q"
    assert token_from("Basic dXNlcg==", "q") is None  # a wrong scheme is no token
    assert token_from(None, None) is None


def test_end_user_secrets_are_masked_and_per_instance_settings_load() -> None:
    settings = Settings(
        end_users=EndUserSettings(
            jwt_secret=SECRET,
            hmac_secret="hmac-secret-hmac-secret",
            instances={"acme": EndUserInstanceSettings(jwks_url="https://u:tok3n@keys.example/")},
        )
    )
    shown = str(settings.masked())
    assert SECRET not in shown and "hmac-secret-hmac-secret" not in shown and "tok3n" not in shown
    assert {SECRET, "hmac-secret-hmac-secret", "tok3n"} <= set(settings.secret_values())
    acme = settings.end_users.for_instance("acme")
    assert acme.jwks_url == "https://u:tok3n@keys.example/" and acme.jwt_secret is not None
    assert settings.end_users.for_instance("other").jwks_url is None
