"""One-time codes: AES-256-GCM round trips, key rotation, and errors that leak nothing."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from tidings.config import CryptoSettings
from tidings.errors import ConfigError
from tidings.notification.codes import (
    CodeCipher,
    EncryptedCode,
    generate_key,
    is_encrypted_code,
)
from tidings.notification.errors import CodeError

CODE = "Q7XK-93LM"
KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 132))
SECRETS = [
    CODE,
    KEY_1.hex(),
    KEY_2.hex(),
    base64.b64encode(KEY_1).decode(),
    base64.b64encode(KEY_2).decode(),
]


def cipher(active: str | None = "k1", **keys: bytes) -> CodeCipher:
    return CodeCipher(keys=keys or {"k1": KEY_1, "k2": KEY_2}, active_key=active)


def with_value(encrypted: EncryptedCode, change: Callable[[bytes], bytes]) -> dict[str, Any]:
    """The dict form of `encrypted` with its decoded value changed."""
    raw = change(base64.b64decode(encrypted.value))
    return {**encrypted.model_dump(), "value": base64.b64encode(raw).decode()}


def assert_leaks_nothing(error: BaseException, *extra: str) -> None:
    shown = f"{error}\n{error!r}\n{vars(error)!r}"
    for secret in [*SECRETS, *extra]:
        assert secret not in shown


@pytest.fixture
def raises_quietly(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., BaseException]]:
    """pytest.raises that also checks the error and every log record for secrets."""
    caught: list[BaseException] = []

    def check(kind: type[BaseException], call: Callable[[], object]) -> BaseException:
        with pytest.raises(kind) as info:
            call()
        assert_leaks_nothing(info.value)
        caught.append(info.value)
        return info.value

    with caplog.at_level(logging.DEBUG):
        yield check
    assert caught
    for record in caplog.records:
        assert_leaks_nothing(Exception(record.getMessage()))


def test_round_trip() -> None:
    c = cipher()
    encrypted = c.encrypt(CODE)
    assert encrypted.crypto_type == "aes-256-gcm"
    assert encrypted.key_id == "k1"
    assert CODE not in encrypted.value
    assert c.decrypt(encrypted) == CODE
    assert c.decrypt(encrypted.model_dump()) == CODE
    assert is_encrypted_code(encrypted.model_dump())
    assert_leaks_nothing(Exception(repr(c)))


def test_each_encryption_uses_a_fresh_nonce() -> None:
    c = cipher()
    first, second = c.encrypt(CODE), c.encrypt(CODE)
    assert first.value != second.value
    assert base64.b64decode(first.value)[:12] != base64.b64decode(second.value)[:12]
    assert c.decrypt(first) == c.decrypt(second) == CODE


def test_random_source_can_be_injected() -> None:
    c = CodeCipher(keys={"k1": KEY_1}, active_key="k1", random=lambda n: b"\x01" * n)
    first, second = c.encrypt(CODE), c.encrypt(CODE)
    assert first == second
    assert base64.b64decode(first.value)[:12] == b"\x01" * 12
    assert c.decrypt(first) == CODE


def test_rotation(raises_quietly: Callable[..., BaseException]) -> None:
    old = cipher("k1").encrypt(CODE)
    rotated = cipher("k2")
    assert rotated.decrypt(old) == CODE
    new = rotated.encrypt(CODE)
    assert new.key_id == "k2"
    assert rotated.decrypt(new) == CODE

    retired = cipher("k2", k2=KEY_2)
    assert retired.decrypt(new) == CODE
    error = raises_quietly(CodeError, lambda: retired.decrypt(old.model_dump()))
    assert vars(error)["key_id"] == "k1"  # CodeError does not annotate its field
    assert "'k1' is not in crypto.keys (known: k2)" in str(error)


def test_a_tampered_value_fails(raises_quietly: Callable[..., BaseException]) -> None:
    c = cipher()
    encrypted = c.encrypt(CODE)
    for position in (0, 12, -1):  # in the nonce, the ciphertext and the tag

        def flip(raw: bytes, at: int = position) -> bytes:
            changed = bytearray(raw)
            changed[at] ^= 0x01
            return bytes(changed)

        tampered = with_value(encrypted, flip)
        error = raises_quietly(CodeError, lambda value=tampered: c.decrypt(value))
        assert "tampered" in str(error)


def test_the_key_id_is_bound_to_the_value(raises_quietly: Callable[..., BaseException]) -> None:
    c = cipher()
    swapped = {**c.encrypt(CODE).model_dump(), "key_id": "k2"}
    error = raises_quietly(CodeError, lambda: c.decrypt(swapped))
    assert "'k2'" in str(error)
    assert "different key" in str(error)


def test_a_key_with_the_same_id_but_other_bytes_fails(
    raises_quietly: Callable[..., BaseException],
) -> None:
    encrypted = cipher(k1=KEY_1).encrypt(CODE)
    raises_quietly(CodeError, lambda: cipher(k1=KEY_2).decrypt(encrypted))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"crypto_type": "aes-128-gcm", "key_id": "k1", "value": "AAAA"}, "crypto_type must be"),
        ({"crypto_type": "aes-256-gcm", "key_id": "k1", "value": "not base64!"}, "base64"),
        ({"crypto_type": "aes-256-gcm", "key_id": "k1", "value": "AAAA"}, "too short"),
        ({"crypto_type": "aes-256-gcm", "key_id": "k1"}, "value is missing"),
        ({"crypto_type": "aes-256-gcm", "key_id": "", "value": "AAAA"}, "key_id"),
        ({"crypto_type": "aes-256-gcm", "key_id": "k1", "value": 7}, "value"),
        ({**dict.fromkeys(("crypto_type", "key_id", "value"), "x"), "x": CODE}, "unexpected"),
        (CODE, "got str"),
        (None, "got NoneType"),
        ([CODE], "got list"),
    ],
)
def test_malformed_values_fail(
    raises_quietly: Callable[..., BaseException], value: Any, expected: str
) -> None:
    error = raises_quietly(CodeError, lambda: cipher().decrypt(value))
    assert expected in str(error)


def test_a_truncated_value_fails(raises_quietly: Callable[..., BaseException]) -> None:
    c = cipher()
    encrypted = c.encrypt(CODE)
    short = with_value(encrypted, lambda raw: raw[:20])
    assert "too short" in str(raises_quietly(CodeError, lambda: c.decrypt(short)))
    cut = with_value(encrypted, lambda raw: raw[:-1])
    assert "tampered" in str(raises_quietly(CodeError, lambda: c.decrypt(cut)))


def test_from_settings_decodes_the_keys() -> None:
    settings = CryptoSettings(
        keys={"k1": SecretStr(base64.b64encode(KEY_1).decode())}, active_key="k1"
    )
    c = CodeCipher.from_settings(settings)
    assert (c.key_ids, c.active_key) == (("k1",), "k1")
    assert cipher().decrypt(c.encrypt(CODE)) == CODE


def test_from_settings_lists_every_bad_key(raises_quietly: Callable[..., BaseException]) -> None:
    not_base64 = "this is not base64 at all!"
    short = base64.b64encode(KEY_1[:16]).decode()
    settings = CryptoSettings(
        keys={
            "good": SecretStr(base64.b64encode(KEY_2).decode()),
            "broken": SecretStr(not_base64),
            "short": SecretStr(short),
        },
        active_key="good",
    )
    error = raises_quietly(ConfigError, lambda: CodeCipher.from_settings(settings))
    assert isinstance(error, ConfigError)
    assert len(error.problems) == 2
    broken, too_short = error.problems
    assert "crypto.keys.broken" in broken
    assert "not valid base64" in broken
    assert "crypto.keys.short" in too_short
    assert "has 16" in too_short
    assert_leaks_nothing(error, not_base64, short)


def test_raw_keys_must_be_32_bytes(raises_quietly: Callable[..., BaseException]) -> None:
    error = raises_quietly(ConfigError, lambda: cipher(k1=KEY_1[:16]))
    assert "has 16" in str(error)


def test_the_active_key_must_be_known(raises_quietly: Callable[..., BaseException]) -> None:
    error = raises_quietly(ConfigError, lambda: cipher("k3"))
    assert "'k3'" in str(error)


def test_encrypting_needs_an_active_key(raises_quietly: Callable[..., BaseException]) -> None:
    c = cipher(None)
    error = raises_quietly(ConfigError, lambda: c.encrypt(CODE))
    assert "crypto.active_key (TIDINGS_CRYPTO_ACTIVE_KEY)" in str(error)
    assert "crypto.keys" in str(error)
    # Decrypting still works without one.
    assert c.decrypt(cipher("k1").encrypt(CODE)) == CODE


def test_generate_key_returns_a_working_key() -> None:
    key = generate_key()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert key != generate_key()
    assert CodeCipher.generate_key() != key
    settings = CryptoSettings(keys={"new": SecretStr(key)}, active_key="new")
    c = CodeCipher.from_settings(settings)
    assert c.decrypt(c.encrypt(CODE)) == CODE
    assert key not in repr(c)


def test_is_encrypted_code() -> None:
    assert is_encrypted_code({"crypto_type": "aes-256-gcm", "key_id": "k1", "value": "AA"})
    assert is_encrypted_code({"crypto_type": "other", "key_id": "k1", "value": "AA"})
    assert not is_encrypted_code({"crypto_type": "aes-256-gcm", "key_id": "k1"})
    assert not is_encrypted_code({"crypto_type": "aes-256-gcm", "key_id": "k1", "value": 1})
    assert not is_encrypted_code(CODE)
    assert not is_encrypted_code(None)
