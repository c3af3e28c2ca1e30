"""One-time codes, encrypted in the event log and decrypted only to render a message.

The platform encrypts a code (password reset code, OTP) before it appends its
event; the event payload then holds the code as

    {"crypto_type": "aes-256-gcm", "key_id": "k1", "value": "<base64>"}

where `value` is base64(nonce || ciphertext || tag): AES-256-GCM with a random
12-byte nonce, and the associated data `b"aes-256-gcm\\x00" + key_id` binds the
crypto type and the key id, so a value cannot be replayed under another key id.

Keys come from `crypto.keys` (key id -> base64 of 32 random bytes); new codes are
encrypted with `crypto.active_key`. Keep retired keys in `crypto.keys` while events
encrypted with them may still be rendered. Neither keys nor plaintext codes ever
appear in an error message, a repr or a log record.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tidings.config import CryptoSettings
from tidings.errors import ConfigError
from tidings.notification.errors import CodeError

CRYPTO_TYPE: Literal["aes-256-gcm"] = "aes-256-gcm"
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

_KEYS_ENV = "TIDINGS_CRYPTO_KEYS"
_ACTIVE_KEY_ENV = "TIDINGS_CRYPTO_ACTIVE_KEY"
_FIELDS = ("crypto_type", "key_id", "value")

RandomSource = Callable[[int], bytes]
"""Returns that many random bytes, like `os.urandom`."""


class EncryptedCode(BaseModel):
    """An encrypted one-time code, as it is stored in an event payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    crypto_type: Literal["aes-256-gcm"]
    key_id: str = Field(min_length=1)
    value: str


def is_encrypted_code(value: Any) -> bool:
    """Whether `value` has the shape of an encrypted code in an event payload.

    This recognises the form (a mapping with string `crypto_type`, `key_id` and
    `value`), not its validity: decrypting it may still fail. It is meant for
    redacting codes, where recognising too much is safer than too little.
    """
    return isinstance(value, Mapping) and all(isinstance(value.get(name), str) for name in _FIELDS)


def generate_key() -> str:
    """A new random key for `crypto.keys`: base64 of 32 bytes from `os.urandom`."""
    return base64.b64encode(os.urandom(KEY_SIZE)).decode("ascii")


class CodeCipher:
    """Encrypts one-time codes with the active key; decrypts them with any known key."""

    def __init__(
        self,
        *,
        keys: Mapping[str, bytes],
        active_key: str | None,
        random: RandomSource = os.urandom,
    ) -> None:
        """Check the raw keys (32 bytes each) and that the active key is among them.

        `random` supplies nonces; inject a deterministic source only in tests.
        """
        problems = [
            _key_problem(key_id, f"must be {KEY_SIZE} bytes, has {len(key)}")
            for key_id, key in keys.items()
            if len(key) != KEY_SIZE
        ]
        if active_key is not None and active_key not in keys:
            problems.append(
                f"invalid setting crypto.active_key (env {_ACTIVE_KEY_ENV}): "
                f"{active_key!r} is not among crypto.keys (known: {_known(keys)})"
            )
        if problems:
            raise ConfigError(problems=problems)
        self._aeads = {key_id: AESGCM(bytes(key)) for key_id, key in keys.items()}
        self._active_key = active_key
        self._random = random

    @classmethod
    def from_settings(cls, settings: CryptoSettings) -> CodeCipher:
        """A cipher with the base64-decoded `crypto.keys`; ConfigError lists every bad key."""
        keys: dict[str, bytes] = {}
        problems: list[str] = []
        for key_id, secret in settings.keys.items():
            key = _decode_key(secret.get_secret_value())
            if key is None:
                problems.append(_key_problem(key_id, "is not valid base64"))
            elif len(key) != KEY_SIZE:
                problems.append(
                    _key_problem(
                        key_id, f"must be {KEY_SIZE} bytes after base64 decoding, has {len(key)}"
                    )
                )
            else:
                keys[key_id] = key
        if problems:
            raise ConfigError(problems=problems)
        return cls(keys=keys, active_key=settings.active_key)

    generate_key = staticmethod(generate_key)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the keys this cipher knows, sorted."""
        return tuple(sorted(self._aeads))

    @property
    def active_key(self) -> str | None:
        """The id of the key new codes are encrypted with, if any."""
        return self._active_key

    def __repr__(self) -> str:
        return f"CodeCipher(key_ids={list(self.key_ids)!r}, active_key={self._active_key!r})"

    def encrypt(self, code: str) -> EncryptedCode:
        """Encrypt `code` with the active key and a fresh random nonce."""
        key_id = self._active_key
        if key_id is None:
            message = (
                "no key to encrypt codes with: set crypto.active_key "
                f"({_ACTIVE_KEY_ENV}) and crypto.keys ({_KEYS_ENV})"
            )
            raise ConfigError(message, problems=[message])
        nonce = self._random(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"the random source returned {len(nonce)} bytes, not {NONCE_SIZE}")
        sealed = self._aeads[key_id].encrypt(nonce, code.encode("utf-8"), _associated_data(key_id))
        value = base64.b64encode(nonce + sealed).decode("ascii")
        return EncryptedCode(crypto_type=CRYPTO_TYPE, key_id=key_id, value=value)

    def decrypt(self, value: Any) -> str:
        """The plaintext of an encrypted code: an EncryptedCode or its dict form.

        Raises CodeError when the value is malformed, its key id is unknown, or it
        fails authentication (tampered with, or encrypted with a different key).
        """
        encrypted = _parse(value)
        aead = self._aeads.get(encrypted.key_id)
        if aead is None:
            raise CodeError(
                f"cannot decrypt the code: key id {encrypted.key_id!r} is not in crypto.keys "
                f"(known: {_known(self._aeads)}); add the key that encrypted it",
                key_id=encrypted.key_id,
            )
        nonce, sealed = _split(encrypted)
        try:
            plaintext = aead.decrypt(nonce, sealed, _associated_data(encrypted.key_id))
        except InvalidTag:
            raise CodeError(
                f"cannot decrypt the code under key id {encrypted.key_id!r}: it was tampered "
                "with or encrypted with a different key",
                key_id=encrypted.key_id,
            ) from None
        return _text(plaintext, encrypted.key_id)


def _associated_data(key_id: str) -> bytes:
    """What binds a value to its crypto type and key id."""
    return f"{CRYPTO_TYPE}\x00{key_id}".encode()


def _decode_key(text: str) -> bytes | None:
    """The bytes of a base64 key, or None when it is not base64."""
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _key_problem(key_id: str, what: str) -> str:
    return f"invalid setting crypto.keys.{key_id} (env {_KEYS_ENV}): the key {what}"


def _known(key_ids: Mapping[str, object]) -> str:
    return ", ".join(sorted(key_ids)) or "none"


def _parse(value: Any) -> EncryptedCode:
    """The EncryptedCode in `value`; CodeError (naming fields, never values) if malformed."""
    if isinstance(value, EncryptedCode):
        return value
    if not isinstance(value, Mapping):
        raise CodeError(
            "cannot decrypt the code: expected an object with crypto_type, key_id and value, "
            f"got {type(value).__name__}"
        )
    key_id = value.get("key_id")
    known_id = key_id if isinstance(key_id, str) and key_id else None
    try:
        return EncryptedCode.model_validate(dict(value))
    except ValidationError as exc:
        raise CodeError(
            f"cannot decrypt the code: malformed encrypted value ({_describe(exc)})",
            key_id=known_id,
        ) from None


def _describe(exc: ValidationError) -> str:
    """The validation errors by field, without the input (which may be a plaintext code)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "value"
        if error["type"] == "literal_error" and field == "crypto_type":
            parts.append(f"crypto_type must be {CRYPTO_TYPE!r}")
        elif error["type"] == "missing":
            parts.append(f"{field} is missing")
        elif error["type"] == "extra_forbidden":
            parts.append(f"unexpected field {field}")
        else:
            parts.append(f"{field}: {error['msg']}")
    return "; ".join(parts)


def _split(encrypted: EncryptedCode) -> tuple[bytes, bytes]:
    """The nonce and the ciphertext with its tag, from the base64 value."""
    try:
        raw = base64.b64decode(encrypted.value, validate=True)
    except (binascii.Error, ValueError):
        raise CodeError(
            f"cannot decrypt the code under key id {encrypted.key_id!r}: value is not valid base64",
            key_id=encrypted.key_id,
        ) from None
    if len(raw) < NONCE_SIZE + TAG_SIZE:
        raise CodeError(
            f"cannot decrypt the code under key id {encrypted.key_id!r}: value is too short "
            f"({len(raw)} bytes, at least {NONCE_SIZE + TAG_SIZE} needed for nonce and tag)",
            key_id=encrypted.key_id,
        )
    return raw[:NONCE_SIZE], raw[NONCE_SIZE:]


def _text(plaintext: bytes, key_id: str) -> str:
    """The decrypted code as text."""
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        raise CodeError(
            f"decrypted the code under key id {key_id!r}, but it is not UTF-8 text",
            key_id=key_id,
        ) from None
