"""What the routes share: the database, settings, keys, the code cipher, the texts."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from tidings.api.grouping import GroupAppender
from tidings.api.keys import ApiKeys
from tidings.api.problems import Problem
from tidings.clock import Clock, utc_now
from tidings.config import Settings
from tidings.errors import ConfigError
from tidings.eventstore import Database
from tidings.notification.codes import CodeCipher, EncryptedCode
from tidings.notification.rendering import TextCatalog


@dataclass
class ApiState:
    db: Database
    settings: Settings
    keys: ApiKeys
    catalog: TextCatalog
    appender: GroupAppender
    cipher: CodeCipher | None = None
    clock: Clock = field(default=utc_now)

    @classmethod
    def from_settings(cls, *, db: Database, settings: Settings) -> ApiState:
        cipher = CodeCipher.from_settings(settings.crypto) if settings.crypto.keys else None
        return cls(
            db=db,
            settings=settings,
            keys=ApiKeys(db=db, cache_seconds=settings.api.key_cache.total_seconds()),
            catalog=TextCatalog(override_dir=settings.templates.dir),
            appender=GroupAppender(store=db.store),
            cipher=cipher,
        )

    def encrypt(self, plain: str) -> EncryptedCode:
        """A plain code sealed with the active key; without one, a 422 saying what to set."""
        if self.cipher is None or self.cipher.active_key is None:
            raise Problem(
                422,
                "this server has no key to encrypt codes with (crypto.active_key and "
                "crypto.keys): send the code encrypted, or ask the operator to set them",
            )
        try:
            return self.cipher.encrypt(plain)
        except ConfigError as exc:
            raise Problem(422, str(exc)) from None


async def state_of(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state
