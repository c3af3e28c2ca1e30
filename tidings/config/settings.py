"""The settings model and how it is loaded.

Precedence, lowest first: the packaged `defaults.yaml`, the user's file
(`--config FILE` or `TIDINGS_CONFIG`), then environment variables named
`TIDINGS_<SECTION>_<KEY>`. Every model forbids unknown keys, so a typo fails at
start instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import platformdirs
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tidings.config.durations import DURATION_HELP, Duration, format_duration, within
from tidings.config.masking import mask_url, url_secrets
from tidings.errors import ConfigError

DEFAULTS_RESOURCE = "defaults.yaml"
CONFIG_ENV = "TIDINGS_CONFIG"
DATA_DIR_ENV = "TIDINGS_DATA_DIR"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: SecretStr | None = None
    data_dir: Path | None = None
    allow_embedded: bool = True
    pool_min_size: int = Field(default=1, ge=1, le=100)
    pool_max_size: int = Field(default=10, ge=1, le=1000)
    connect_timeout: Annotated[Duration, within("100ms", "5m")] = Field(
        default_factory=lambda: timedelta(seconds=10)
    )

    @model_validator(mode="after")
    def _pool_sizes_agree(self) -> DatabaseSettings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"pool_min_size ({self.pool_min_size}) must not exceed "
                f"pool_max_size ({self.pool_max_size})"
            )
        return self

    def data_folder(self) -> Path:
        """The one folder tidings writes into by default: data_dir, or <user data dir>/tidings.

        The embedded PostgreSQL keeps its data in <data folder>/pgdata and the
        filesystem channel writes into <data folder>/outbox, so two data folders
        never share anything.
        """
        if self.data_dir is not None:
            return self.data_dir.expanduser()
        return Path(platformdirs.user_data_dir("tidings"))

    def embedded_data_dir(self) -> Path:
        """Where the embedded PostgreSQL keeps its data when no url is set: <data folder>/pgdata.

        A data_dir that already is an embedded PostgreSQL's folder (before 0.2 it
        named the pgdata folder itself) stays one, so an upgrade finds its data.
        """
        folder = self.data_folder()
        if self.data_dir is not None and (folder / "PG_VERSION").exists():
            return folder
        return folder / "pgdata"


class NotificationSettings(_Section):
    processes: int = Field(default=0, ge=0, le=256)  # 0: one per usable core
    workers: int = Field(default=1, ge=0, le=1000)
    bulk_limit: int = Field(default=10, ge=1, le=10000)
    requeue_every: Annotated[Duration, within("10ms", "1h")] = Field(
        default_factory=lambda: timedelta(seconds=2)
    )
    retry_workers: int = Field(default=1, ge=0, le=1000)
    retry_requeue_every: Annotated[Duration, within("10ms", "1h")] = Field(
        default_factory=lambda: timedelta(seconds=2)
    )
    handle_active_instances: Annotated[Duration, within("0s", "30d")] = Field(
        default_factory=lambda: timedelta(seconds=0)
    )
    transaction_duration: Annotated[Duration, within("1s", "1d")] = Field(
        default_factory=lambda: timedelta(seconds=60)
    )
    max_attempts: int = Field(default=3, ge=1, le=1000)
    max_ttl: Annotated[Duration, within("1s", "30d")] = Field(
        default_factory=lambda: timedelta(seconds=300)
    )
    min_retry_delay: Annotated[Duration, within("10ms", "1d")] = Field(
        default_factory=lambda: timedelta(seconds=1)
    )
    max_retry_delay: Annotated[Duration, within("10ms", "7d")] = Field(
        default_factory=lambda: timedelta(seconds=20)
    )
    retry_delay_factor: float = Field(default=1.5, ge=0, le=100)
    notify_on_password_change: bool = False
    shutdown_grace: Annotated[Duration, within("1s", "1h")] = Field(
        default_factory=lambda: timedelta(seconds=25)
    )

    @model_validator(mode="after")
    def _retry_delays_agree(self) -> NotificationSettings:
        if self.min_retry_delay > self.max_retry_delay:
            raise ValueError(
                f"min_retry_delay ({format_duration(self.min_retry_delay)}) must not exceed "
                f"max_retry_delay ({format_duration(self.max_retry_delay)})"
            )
        return self


class EventSettings(_Section):
    """What an appended event may hold (checked before it reaches the store)."""

    max_id_length: int = Field(default=200, ge=1, le=255)
    max_type_length: int = Field(default=200, ge=1, le=255)
    max_payload_bytes: int = Field(default=65536, ge=1024, le=1048576)


class ProjectionSettings(_Section):
    batch_size: int = Field(default=500, ge=1, le=100000)
    poll_every: Annotated[Duration, within("10ms", "1h")] = Field(
        default_factory=lambda: timedelta(seconds=1)
    )
    leader_retry_every: Annotated[Duration, within("100ms", "10m")] = Field(
        default_factory=lambda: timedelta(seconds=1)
    )


EmailChannelName = Literal["filesystem", "log", "smtp", "webhook"]
SMSChannelName = Literal["filesystem", "log", "twilio", "webhook"]


class ChannelChoice(_Section):
    email: EmailChannelName | None = None
    sms: SMSChannelName | None = None


class FilesystemChannelSettings(_Section):
    outbox_dir: Path | None = None

    def outbox(self, data_folder: Path) -> Path:
        """Where messages are written: outbox_dir, or <data folder>/outbox."""
        return (
            self.outbox_dir.expanduser() if self.outbox_dir is not None else data_folder / "outbox"
        )


class SMTPChannelSettings(_Section):
    host: str = "localhost"
    port: int = Field(default=25, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    from_address: str = "tidings@localhost"
    from_name: str = ""
    reply_to: str | None = None
    timeout: Annotated[Duration, within("100ms", "10m")] = Field(
        default_factory=lambda: timedelta(seconds=10)
    )
    ca_file: Path | None = None


class TwilioChannelSettings(_Section):
    account_sid: str = ""
    auth_token: SecretStr | None = None
    from_number: str = ""
    messaging_service_sid: str = ""
    base_url: str = "https://api.twilio.com"
    permanent_error_codes: tuple[int, ...] = (60203, 60410)
    timeout: Annotated[Duration, within("100ms", "10m")] = Field(
        default_factory=lambda: timedelta(seconds=10)
    )


class WebhookChannelSettings(_Section):
    url: str = ""
    signing_secret: SecretStr | None = None
    timeout: Annotated[Duration, within("100ms", "10m")] = Field(
        default_factory=lambda: timedelta(seconds=10)
    )


class ChannelSettings(_Section):
    email: EmailChannelName = "filesystem"
    sms: SMSChannelName = "filesystem"
    instances: dict[str, ChannelChoice] = Field(default_factory=dict)
    filesystem: FilesystemChannelSettings = Field(default_factory=FilesystemChannelSettings)
    smtp: SMTPChannelSettings = Field(default_factory=SMTPChannelSettings)
    twilio: TwilioChannelSettings = Field(default_factory=TwilioChannelSettings)
    webhook: WebhookChannelSettings = Field(default_factory=WebhookChannelSettings)

    def for_instance(self, instance_id: str) -> tuple[str, str]:
        """The channel names that serve email and SMS for one instance."""
        choice = self.instances.get(instance_id)
        email = choice.email if choice is not None and choice.email else self.email
        sms = choice.sms if choice is not None and choice.sms else self.sms
        return email, sms


def _parse_keys(value: Any) -> Any:
    """crypto.keys as a mapping, or as `id=base64key,id2=base64key` in one variable."""
    if isinstance(value, str) and value.strip().startswith("{"):
        return json.loads(value)
    if isinstance(value, str):
        pairs = [part.strip() for part in value.split(",") if part.strip()]
        keys: dict[str, str] = {}
        for pair in pairs:
            key_id, sep, secret = pair.partition("=")
            if not sep or not key_id.strip() or not secret.strip():
                raise ValueError("write keys as id=base64key[,id2=base64key]")
            keys[key_id.strip()] = secret.strip()
        return keys
    return value


class CryptoSettings(_Section):
    keys: Annotated[dict[str, SecretStr], BeforeValidator(_parse_keys)] = Field(
        default_factory=dict
    )
    active_key: str | None = None

    @model_validator(mode="after")
    def _active_key_exists(self) -> CryptoSettings:
        if self.active_key is not None and self.active_key not in self.keys:
            known = ", ".join(sorted(self.keys)) or "none"
            raise ValueError(f"active_key {self.active_key!r} is not among the keys ({known})")
        return self


class TemplateSettings(_Section):
    dir: Path | None = None
    fallback_language: str = "en"
    product_name: str = "tidings"
    allowed_url_schemes: tuple[str, ...] = ("https", "http")
    max_field_bytes: int = Field(default=65536, ge=1024, le=16777216)
    max_message_bytes: int = Field(default=1048576, ge=4096, le=67108864)
    render_timeout: Annotated[Duration, within("10ms", "1m")] = Field(
        default_factory=lambda: timedelta(seconds=2)
    )

    @model_validator(mode="after")
    def _schemes_are_schemes(self) -> TemplateSettings:
        bad = [
            s for s in self.allowed_url_schemes if s.lower() in ("javascript", "data", "vbscript")
        ]
        if bad or not self.allowed_url_schemes:
            raise ValueError(
                "allowed_url_schemes must name link schemes such as https and http, never "
                "javascript, data or vbscript"
            )
        return self


def parse_address(value: str) -> tuple[str, int]:
    """`host:port` (an IPv6 host in brackets: `[::1]:9464`) as (host, port)."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(
            f"expected host:port such as 127.0.0.1:9464 or 0.0.0.0:9464, got {value!r}"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, like [::1]:9464, got {value!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"the port must be between 1 and 65535, got {port}")
    if not host:
        raise ValueError(f"expected host:port such as 127.0.0.1:9464, got {value!r}")
    return host, port


def _check_address(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    parse_address(value)
    return value.strip()


Address = Annotated[str | None, AfterValidator(_check_address)]


class OperationsSettings(_Section):
    metrics_addr: Address = None
    ready_max_projector_lag: Annotated[Duration, within("0s", "1d")] = Field(
        default_factory=lambda: timedelta(seconds=30)
    )
    log_format: Literal["text", "json"] = "text"

    def metrics_address(self) -> tuple[str, int] | None:
        """Where /metrics, /healthz and /readyz are served, or None when off."""
        return parse_address(self.metrics_addr) if self.metrics_addr else None


class APISettings(_Section):
    addr: str = "127.0.0.1:8080"
    max_body: int = Field(default=1_048_576, ge=1024, le=1_073_741_824)
    max_batch: int = Field(default=1000, ge=1, le=65_536)
    body_timeout: Annotated[Duration, within("100ms", "10m")] = Field(
        default_factory=lambda: timedelta(seconds=10)
    )
    keep_alive: Annotated[Duration, within("1s", "10m")] = Field(
        default_factory=lambda: timedelta(seconds=5)
    )
    max_concurrency: int = Field(default=1000, ge=1, le=1_000_000)
    shutdown_timeout: Annotated[Duration, within("1s", "1h")] = Field(
        default_factory=lambda: timedelta(seconds=30)
    )
    key_cache: Annotated[Duration, within("0s", "1h")] = Field(
        default_factory=lambda: timedelta(seconds=5)
    )

    @field_validator("addr")
    @classmethod
    def _valid_addr(cls, value: str) -> str:
        parse_address(value)
        return value.strip()

    def address(self) -> tuple[str, int]:
        return parse_address(self.addr)


def _check_url(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    if not value.strip().startswith(("https://", "http://")):
        raise ValueError(f"expected an http(s) URL, got {value!r}")
    return value.strip()


HttpURL = Annotated[str | None, AfterValidator(_check_url)]


class EndUserInstanceSettings(_Section):
    """One instance's own end-user settings; what is left out comes from end_users."""

    jwt_secret: SecretStr | None = None
    jwks_url: HttpURL = None
    issuer: str | None = None
    audience: str | None = None
    hmac_secret: SecretStr | None = None


class EndUserSettings(_Section):
    jwt_secret: SecretStr | None = None
    jwks_url: HttpURL = None
    issuer: str | None = None
    audience: str | None = None
    instance_claim: str = Field(default="instance", min_length=1)
    leeway: Duration = Field(default_factory=lambda: timedelta(seconds=30))
    jwks_cache: Duration = Field(default_factory=lambda: timedelta(minutes=10))
    jwks_min_refresh: Duration = Field(default_factory=lambda: timedelta(seconds=30))
    hmac_secret: SecretStr | None = None
    instances: dict[str, EndUserInstanceSettings] = Field(default_factory=dict)

    def for_instance(self, instance_id: str) -> EndUserInstanceSettings:
        """The settings that verify this instance's tokens: its overrides, then the defaults."""
        base = EndUserInstanceSettings(
            jwt_secret=self.jwt_secret,
            jwks_url=self.jwks_url,
            issuer=self.issuer,
            audience=self.audience,
            hmac_secret=self.hmac_secret,
        )
        override = self.instances.get(instance_id)
        if override is None:
            return base
        return base.model_copy(update=override.model_dump(exclude_unset=True))


class InAppSettings(_Section):
    retention: Duration = Field(default_factory=lambda: timedelta(days=90))
    retention_every: Duration = Field(default_factory=lambda: timedelta(hours=1))
    queue_size: int = Field(default=256, ge=1)
    poll_every: Duration = Field(default_factory=lambda: timedelta(seconds=1))
    heartbeat: Duration = Field(default_factory=lambda: timedelta(seconds=15))
    max_poll_wait: Annotated[Duration, within("1s", "10m")] = Field(
        default_factory=lambda: timedelta(seconds=60)
    )
    presence_heartbeat: Annotated[Duration, within("1s", "5m")] = Field(
        default_factory=lambda: timedelta(seconds=10)
    )


class Settings(BaseSettings):
    """Every setting of tidings; see defaults.yaml for what each one does."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_", extra="forbid", frozen=True)

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    projections: ProjectionSettings = Field(default_factory=ProjectionSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    channels: ChannelSettings = Field(default_factory=ChannelSettings)
    crypto: CryptoSettings = Field(default_factory=CryptoSettings)
    templates: TemplateSettings = Field(default_factory=TemplateSettings)
    operations: OperationsSettings = Field(default_factory=OperationsSettings)
    api: APISettings = Field(default_factory=APISettings)
    inapp: InAppSettings = Field(default_factory=InAppSettings)
    end_users: EndUserSettings = Field(default_factory=EndUserSettings)

    @model_validator(mode="after")
    def _lease_covers_send_and_record(self) -> Settings:
        # An attempt's send is cut off at half the lease, and the outcome is
        # recorded in the other half: a channel whose own timeout runs longer
        # than half the lease would be cut off before it can say why, and a
        # lease shorter than a send invites a second worker to send again.
        lease = self.notifications.transaction_duration
        channels = self.channels
        used = {channels.email, channels.sms}
        for choice in channels.instances.values():
            used |= {name for name in (choice.email, choice.sms) if name}
        timeouts = {
            f"channels.{name}.timeout": getattr(channels, name).timeout
            for name in ("smtp", "twilio", "webhook")
            if name in used
        }
        if not timeouts:  # filesystem and log only: they do not wait on anyone
            return self
        name, longest = max(timeouts.items(), key=lambda item: item[1])
        if lease < 2 * longest:
            raise ValueError(
                f"notifications.transaction_duration ({format_duration(lease)}) must be at "
                f"least twice the longest timeout of a channel in use ({name}, "
                f"{format_duration(longest)}): "
                "a send takes up to its channel's timeout within the first half of the lease, "
                "the second half is left to record the outcome; raise transaction_duration or "
                "lower the timeout"
            )
        return self

    def masked(self) -> dict[str, Any]:
        """The settings as plain values, with every secret masked."""
        shown: dict[str, Any] = _mask_secrets(self.model_dump())
        if self.database.url is not None:
            shown["database"]["url"] = mask_url(self.database.url.get_secret_value())
        # Endpoint URLs may carry credentials (https://user:pass@host/hook?token=...).
        channels = shown["channels"]
        channels["webhook"]["url"] = mask_url(self.channels.webhook.url)
        channels["twilio"]["base_url"] = mask_url(self.channels.twilio.base_url)
        end_users = shown["end_users"]
        if self.end_users.jwks_url:
            end_users["jwks_url"] = mask_url(self.end_users.jwks_url)
        for name, instance in self.end_users.instances.items():
            if instance.jwks_url:
                end_users["instances"][name]["jwks_url"] = mask_url(instance.jwks_url)
        return shown

    def secret_values(self) -> list[str]:
        """Every configured secret as written, longest first: what logs must never show.

        The SecretStr settings, and the passwords and tokens inside the database
        and endpoint URLs. Values shorter than 4 characters are left out: masking
        them everywhere would garble logs without protecting anything.
        """
        found = [
            secret.get_secret_value()
            for secret in _secret_strs(self)
            if secret is not self.database.url  # its secret is the password in it
        ]
        signing_secret = self.channels.webhook.signing_secret
        if signing_secret is not None:  # the base64 key without its whsec_ prefix, too
            found.append(signing_secret.get_secret_value().strip().removeprefix("whsec_"))
        if self.database.url is not None:
            found += url_secrets(self.database.url.get_secret_value())
        found += url_secrets(self.channels.webhook.url)
        for jwks_url in (self.end_users.jwks_url,
                         *(i.jwks_url for i in self.end_users.instances.values())):  # fmt: skip
            found += url_secrets(jwks_url or "")
        found += url_secrets(self.channels.twilio.base_url)
        return sorted({value for value in found if len(value) >= 4}, key=len, reverse=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: environment variables, then the files (passed in as init
        # arguments by load_settings).
        return (_LeafEnvSource(settings_cls), init_settings)


class _LeafEnvSource(PydanticBaseSettingsSource):
    """One variable per setting: `channels.smtp.host` is TIDINGS_CHANNELS_SMTP_HOST.

    Values stay strings for pydantic to parse, except that a mapping or list
    setting takes JSON (`{"acme": {...}}`, `[1, 2]`) or, for lists, `a,b`.
    A TIDINGS_* variable that names no setting is an error, so a typo in a
    deployment fails at start instead of being ignored.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        leaves = dict(_leaves(Settings))
        leaves[DATA_DIR_ENV] = (("database", "data_dir"), str)
        found: dict[str, Any] = {}
        problems: list[str] = []
        for name, value in os.environ.items():
            if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS:
                continue
            leaf = leaves.get(name)
            if leaf is None:
                hint = difflib.get_close_matches(name, list(leaves), n=1)
                problems.append(
                    f"unknown setting {name}"
                    + (f": did you mean {hint[0]}?" if hint else ": no setting has that name")
                )
                continue
            path, annotation = leaf
            node = found
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node.setdefault(path[-1], _env_value(value, annotation))
        if problems:
            raise ConfigError(problems=problems)
        return found


ENV_PREFIX = "TIDINGS_"
_NOT_SETTINGS = {CONFIG_ENV}


def _leaves(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        here = (*path, name)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _leaves(annotation, here)
        else:
            yield ENV_PREFIX + "_".join(here).upper(), (here, annotation)


def _env_value(value: str, annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin is Annotated:
        origin = get_origin(get_args(annotation)[0])
    if origin in (dict, list, tuple):
        text = value.strip()
        if text.startswith(("{", "[")):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(problems=[f"not valid JSON: {value!r} ({exc.msg})"]) from exc
        if origin in (list, tuple):
            return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _secret_strs(value: Any) -> Iterator[SecretStr]:
    if isinstance(value, SecretStr):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_strs(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_strs(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secret_strs(item)


def _mask_secrets(value: Any) -> Any:
    """JSON-ready values with every SecretStr shown as *** (and an unset one as null)."""
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, dict):
        return {key: _mask_secrets(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_secrets(item) for item in value]
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Path):
        return str(value)
    return value


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
    if message.startswith("Input should be a valid duration") or DURATION_HELP in message:
        message = f"expected {DURATION_HELP}"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    if not key:  # a rule across sections
        return f"invalid settings: {message}"
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
