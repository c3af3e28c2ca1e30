"""The settings model and how it is loaded.

Precedence, lowest first: the packaged `defaults.yaml`, the user's file
(`--config FILE` or `TIDINGS_CONFIG`), then environment variables named
`TIDINGS_<SECTION>_<KEY>`. Every model forbids unknown keys, so a typo fails at
start instead of being silently ignored.
"""

from __future__ import annotations

import os
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import platformdirs
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tidings.config.durations import DURATION_HELP, Duration, format_duration
from tidings.config.masking import mask_url
from tidings.errors import ConfigError

DEFAULTS_RESOURCE = "defaults.yaml"
CONFIG_ENV = "TIDINGS_CONFIG"
DATA_DIR_ENV = "TIDINGS_DATA_DIR"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: SecretStr | None = None
    data_dir: Path | None = None
    pool_min_size: int = Field(default=1, ge=1)
    pool_max_size: int = Field(default=10, ge=1)
    connect_timeout: Duration = Field(default_factory=lambda: timedelta(seconds=10))

    @model_validator(mode="after")
    def _pool_sizes_agree(self) -> DatabaseSettings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"pool_min_size ({self.pool_min_size}) must not exceed "
                f"pool_max_size ({self.pool_max_size})"
            )
        return self

    def embedded_data_dir(self) -> Path:
        """Where the embedded PostgreSQL keeps its data when no url is set."""
        if self.data_dir is not None:
            return self.data_dir.expanduser()
        return Path(platformdirs.user_data_dir("tidings")) / "pgdata"


class NotificationSettings(_Section):
    workers: int = Field(default=1, ge=0)
    bulk_limit: int = Field(default=10, ge=1)
    requeue_every: Duration = Field(default_factory=lambda: timedelta(seconds=2))
    retry_workers: int = Field(default=1, ge=0)
    retry_requeue_every: Duration = Field(default_factory=lambda: timedelta(seconds=2))
    handle_active_instances: Duration = Field(default_factory=lambda: timedelta(seconds=0))
    transaction_duration: Duration = Field(default_factory=lambda: timedelta(seconds=60))
    max_attempts: int = Field(default=3, ge=1)
    max_ttl: Duration = Field(default_factory=lambda: timedelta(seconds=300))
    min_retry_delay: Duration = Field(default_factory=lambda: timedelta(seconds=1))
    max_retry_delay: Duration = Field(default_factory=lambda: timedelta(seconds=20))
    retry_delay_factor: float = Field(default=1.5, ge=0)
    notify_on_password_change: bool = False

    @model_validator(mode="after")
    def _retry_delays_agree(self) -> NotificationSettings:
        if self.min_retry_delay > self.max_retry_delay:
            raise ValueError(
                f"min_retry_delay ({format_duration(self.min_retry_delay)}) must not exceed "
                f"max_retry_delay ({format_duration(self.max_retry_delay)})"
            )
        return self


class ProjectionSettings(_Section):
    batch_size: int = Field(default=500, ge=1)
    poll_every: Duration = Field(default_factory=lambda: timedelta(seconds=1))
    leader_retry_every: Duration = Field(default_factory=lambda: timedelta(seconds=1))


class Settings(BaseSettings):
    """Every setting of tidings; see defaults.yaml for what each one does."""

    model_config = SettingsConfigDict(
        env_prefix="TIDINGS_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        frozen=True,
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    projections: ProjectionSettings = Field(default_factory=ProjectionSettings)

    def masked(self) -> dict[str, Any]:
        """The settings as plain values, with every secret masked."""
        shown = self.model_dump(mode="json")
        if self.database.url is not None:
            shown["database"]["url"] = mask_url(self.database.url.get_secret_value())
        return shown

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: environment, the TIDINGS_DATA_DIR shorthand, then the files
        # (passed in as init arguments by load_settings).
        return (env_settings, _DataDirShorthand(settings_cls), init_settings)


class _DataDirShorthand(PydanticBaseSettingsSource):
    """`TIDINGS_DATA_DIR` is a documented shorthand for `TIDINGS_DATABASE_DATA_DIR`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        value = os.environ.get(DATA_DIR_ENV)
        return {"database": {"data_dir": value}} if value else {}


def read_defaults() -> dict[str, Any]:
    """The packaged defaults.yaml as a mapping."""
    text = resources.files("tidings.config").joinpath(DEFAULTS_RESOURCE).read_text("utf-8")
    return _mapping(yaml.safe_load(text), DEFAULTS_RESOURCE)


def load_settings(config_file: Path | None = None) -> Settings:
    """Load the effective settings, or raise ConfigError with one line per problem."""
    merged = read_defaults()
    path = config_file or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is not None:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(problems=[f"cannot read config file {path}: {exc.strerror}"]) from exc
        try:
            user = _mapping(yaml.safe_load(text), str(path))
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
            raise ConfigError(problems=[f"config file {path} is not valid YAML: {first}"]) from exc
        merged = _deep_merge(merged, user)
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(problems=[_describe(error) for error in exc.errors()]) from exc


def _mapping(value: Any, origin: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(problems=[f"{origin} must hold a mapping of sections, got {value!r}"])
    return value


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"])
    env = "TIDINGS_" + "_".join(str(part) for part in error["loc"]).upper()
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        section = ".".join(str(part) for part in error["loc"][:-1])
        allowed = _allowed_keys(error["loc"][:-1])
        where = f"section {section}" if section else "the top level"
        return f"unknown setting {key} (env {env}) = {value!r}: {where} allows {', '.join(allowed)}"
    message = str(error["msg"])
    if "duration" in message or DURATION_HELP in message:
        message = f"expected {DURATION_HELP}"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    if isinstance(value, dict):  # a rule across keys of one section
        return f"invalid settings in section {key}: {message}"
    return f"invalid setting {key} (env {env}) = {value!r}: {message}"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Settings
    for part in loc:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)
