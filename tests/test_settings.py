"""Settings: defaults, the user file, environment variables, and clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from tests.cli import clean_env as cli_clean_env
from tests.cli import tidings
from tidings.config import NotificationSettings, Settings, load_settings
from tidings.config.durations import Within, format_duration, parse_duration
from tidings.config.settings import read_defaults
from tidings.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TIDINGS_"):
            monkeypatch.delenv(name)


def test_worker_pool_defaults() -> None:
    n = load_settings().notifications
    assert (n.workers, n.bulk_limit, n.retry_workers, n.max_attempts) == (1, 10, 1, 3)
    assert n.requeue_every == n.retry_requeue_every == timedelta(seconds=2)
    assert n.handle_active_instances == timedelta(0)
    assert n.transaction_duration == timedelta(minutes=1)
    assert n.max_ttl == timedelta(minutes=5)
    assert (n.min_retry_delay, n.max_retry_delay) == (timedelta(seconds=1), timedelta(seconds=20))
    assert n.retry_delay_factor == 1.5


def test_defaults_yaml_and_the_model_agree() -> None:
    """Every key has a default in defaults.yaml, equal to the model's own default."""
    from_yaml = Settings(**read_defaults()).model_dump()
    from_model = Settings().model_dump()
    assert from_yaml == from_model
    assert set(read_defaults()["notifications"]) == set(NotificationSettings.model_fields)


def test_every_default_has_a_comment() -> None:
    """Each setting has a describing comment above it (a group may share one)."""
    text = (Path(__file__).parents[1] / "tidings/config/defaults.yaml").read_text()
    described = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            described = True
        elif not stripped or stripped.endswith(":"):
            described = False  # a blank line or a section header starts a new group
        else:
            assert described, f"defaults.yaml line {number} has no comment above it: {line!r}"


def test_user_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "tidings.yaml"
    user.write_text(yaml.safe_dump({"notifications": {"workers": 4, "max_ttl": "10m"}}))
    s = load_settings(user)
    assert s.notifications.workers == 4
    assert s.notifications.max_ttl == timedelta(minutes=10)
    assert s.notifications.bulk_limit == 10  # untouched keys keep their default

    monkeypatch.setenv("TIDINGS_NOTIFICATIONS_WORKERS", "7")
    monkeypatch.setenv("TIDINGS_NOTIFICATIONS_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("TIDINGS_NOTIFICATIONS_REQUEUE_EVERY", "500ms")
    s = load_settings(user)
    assert s.notifications.workers == 7
    assert s.notifications.max_attempts == 5
    assert s.notifications.requeue_every == timedelta(milliseconds=500)
    assert s.notifications.max_ttl == timedelta(minutes=10)


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "t.yaml"
    user.write_text("notifications:\n  bulk_limit: 100\n")
    monkeypatch.setenv("TIDINGS_CONFIG", str(user))
    assert load_settings().notifications.bulk_limit == 100


def test_database_url_and_data_dir_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_DATA_DIR", "/srv/tidings-pg")
    s = load_settings()
    assert s.database.url is None
    assert s.database.embedded_data_dir() == Path("/srv/tidings-pg/pgdata")
    assert s.channels.filesystem.outbox(s.database.data_folder()) == Path("/srv/tidings-pg/outbox")
    monkeypatch.setenv("TIDINGS_DATABASE_URL", "postgresql://u:pw@db/tidings")
    s = load_settings()
    assert s.database.url is not None
    assert s.database.url.get_secret_value() == "postgresql://u:pw@db/tidings"
    assert "pw" not in repr(s)


def test_everything_tidings_writes_stays_in_its_data_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """TIDINGS_DATA_DIR=/srv/x: the database in /srv/x/pgdata, the outbox in /srv/x/outbox
    (it was /srv/outbox, shared by every data folder beside it); an older data_dir that
    is itself a PostgreSQL data folder stays one."""
    for name in ("a", "b"):
        monkeypatch.setenv("TIDINGS_DATA_DIR", str(tmp_path / name))
        s = load_settings()
        assert s.database.embedded_data_dir() == tmp_path / name / "pgdata"
        outbox = s.channels.filesystem.outbox(s.database.data_folder())
        assert outbox == tmp_path / name / "outbox"
        assert outbox.is_relative_to(tmp_path / name)
    old = tmp_path / "old-pgdata"
    old.mkdir()
    (old / "PG_VERSION").write_text("16\n")
    monkeypatch.setenv("TIDINGS_DATA_DIR", str(old))
    assert load_settings().database.embedded_data_dir() == old


def test_default_data_dir_is_under_the_user_data_directory() -> None:
    import platformdirs

    expected = Path(platformdirs.user_data_dir("tidings")) / "pgdata"
    assert load_settings().database.embedded_data_dir() == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("2s", timedelta(seconds=2)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("1h30m", timedelta(minutes=90)),
        ("1.5s", timedelta(seconds=1.5)),
        ("0s", timedelta(0)),
        ("0", timedelta(0)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "m5", "5x", "-1s", "1s2", "ms"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="500ms, 2s, 5m, 1h"):
        parse_duration(text)


def test_bad_value_names_key_value_and_what_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_NOTIFICATIONS_MAX_TTL", "forever")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    (line,) = str(caught.value).splitlines()
    assert "notifications.max_ttl" in line
    assert "TIDINGS_NOTIFICATIONS_MAX_TTL" in line
    assert "'forever'" in line
    assert "500ms, 2s, 5m, 1h" in line


def test_negative_count_is_refused(tmp_path: Path) -> None:
    user = tmp_path / "t.yaml"
    user.write_text("notifications:\n  workers: -1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(user)
    line = str(caught.value)
    assert "notifications.workers" in line and "-1" in line and "greater than or equal to 0" in line


def test_unknown_key_in_file_is_refused_with_the_allowed_ones(tmp_path: Path) -> None:
    user = tmp_path / "t.yaml"
    user.write_text("notifications:\n  max_atempts: 5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(user)
    (line,) = str(caught.value).splitlines()
    assert "unknown setting notifications.max_atempts" in line
    assert "max_attempts" in line  # the allowed keys are listed


def test_unknown_key_in_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_NOTIFICATIONS_WORKER", "3")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "unknown setting TIDINGS_NOTIFICATIONS_WORKER: did you mean TIDINGS_NOTIFICATIONS_WORKERS?"
    )


def test_nested_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_CHANNELS_SMTP_HOST", "mail.internal")
    monkeypatch.setenv("TIDINGS_CHANNELS_SMTP_PORT", "587")
    monkeypatch.setenv("TIDINGS_CHANNELS_TWILIO_PERMANENT_ERROR_CODES", "60203,21610")
    monkeypatch.setenv("TIDINGS_CHANNELS_INSTANCES", '{"acme": {"email": "smtp"}}')
    monkeypatch.setenv("TIDINGS_CRYPTO_KEYS", "k1=a2V5MQ==,k2=a2V5Mg==")
    monkeypatch.setenv("TIDINGS_CRYPTO_ACTIVE_KEY", "k2")
    s = load_settings()
    assert (s.channels.smtp.host, s.channels.smtp.port) == ("mail.internal", 587)
    assert s.channels.twilio.permanent_error_codes == (60203, 21610)
    assert s.channels.for_instance("acme") == ("smtp", "filesystem")
    assert s.channels.for_instance("globex") == ("filesystem", "filesystem")
    assert sorted(s.crypto.keys) == ["k1", "k2"]
    shown = s.masked()
    assert shown["crypto"]["keys"] == {"k1": "***", "k2": "***"}
    monkeypatch.setenv("TIDINGS_CRYPTO_ACTIVE_KEY", "k9")
    with pytest.raises(ConfigError, match=r"active_key 'k9' is not among the keys \(k1, k2\)"):
        load_settings()


def test_every_leaf_of_defaults_yaml_names_its_variable() -> None:
    text = (Path(__file__).parents[1] / "tidings/config/defaults.yaml").read_text()
    from tidings.config.settings import _leaves

    for name, _ in _leaves(Settings):
        assert name in text, f"defaults.yaml does not mention {name}"


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    user = tmp_path / "t.yaml"
    user.write_text("notification:\n  workers: 5\n")
    with pytest.raises(ConfigError, match="unknown setting notification "):
        load_settings(user)


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("notifications: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings(listed)


def test_keys_that_must_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_NOTIFICATIONS_MIN_RETRY_DELAY", "30s")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    (line,) = str(caught.value).splitlines()
    assert line == (
        "invalid settings in section notifications: "
        "min_retry_delay (30s) must not exceed max_retry_delay (20s)"
    )
    monkeypatch.delenv("TIDINGS_NOTIFICATIONS_MIN_RETRY_DELAY")
    monkeypatch.setenv("TIDINGS_DATABASE_POOL_MIN_SIZE", "20")
    with pytest.raises(ConfigError, match=r"pool_min_size \(20\) must not exceed"):
        load_settings()


def _bounded_leaves(model: type[BaseModel], path: str = "") -> Iterator[tuple[str, str, str]]:
    """(dotted key, low, high) of every setting with bounds in the model."""
    for name, info in model.model_fields.items():
        key = f"{path}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _bounded_leaves(annotation, f"{key}.")
            continue
        low = high = None
        for meta in info.metadata:
            low = getattr(meta, "ge", low)
            high = getattr(meta, "le", high)
            func = getattr(meta, "func", None)
            if isinstance(func, Within):
                low, high = func.low, func.high
        if low is not None and high is not None:
            yield key, str(low), str(high)


def test_every_count_and_duration_has_bounds_written_in_defaults_yaml() -> None:
    """Each bound in the model is in the comment above its key in defaults.yaml."""
    text = (Path(__file__).parents[1] / "tidings/config/defaults.yaml").read_text()
    lines = text.splitlines()
    bounded = dict((key, (low, high)) for key, low, high in _bounded_leaves(Settings))
    for key in (
        "database.connect_timeout", "notifications.workers", "notifications.bulk_limit",
        "notifications.transaction_duration", "notifications.max_attempts",
        "notifications.max_ttl", "notifications.shutdown_grace", "projections.batch_size",
        "projections.poll_every", "projections.leader_retry_every",
        "channels.smtp.timeout", "channels.webhook.timeout", "events.max_id_length",
    ):  # fmt: skip
        assert key in bounded, f"{key} has no bounds"
    for key, (low, high) in bounded.items():
        if key == "channels.smtp.port":
            continue
        leaf = key.rsplit(".", 1)[-1]
        # The key's line in its section, then the comment lines right above it.
        section_start = next(
            i for i, line in enumerate(lines) if line.strip() == f"{key.split('.')[-2]}:"
        )
        number = next(
            i for i in range(section_start, len(lines)) if lines[i].strip().startswith(f"{leaf}:")
        )
        comment = []
        for above in reversed(lines[:number]):
            if not above.strip().startswith("#"):
                break
            comment.append(above)
        assert f"{low} to {high}" in " ".join(comment), (
            f"{key}: bounds {low} to {high} not in {comment}"
        )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TIDINGS_NOTIFICATIONS_TRANSACTION_DURATION", "0s", "must be between 1s and 1d"),
        ("TIDINGS_NOTIFICATIONS_BULK_LIMIT", "0", "greater than or equal to 1"),
        ("TIDINGS_NOTIFICATIONS_MAX_ATTEMPTS", "5000", "less than or equal to 1000"),
        ("TIDINGS_PROJECTIONS_POLL_EVERY", "0s", "must be between 10ms and 1h"),
        ("TIDINGS_PROJECTIONS_LEADER_RETRY_EVERY", "0s", "must be between 100ms and 10m"),
        ("TIDINGS_CHANNELS_WEBHOOK_TIMEOUT", "0s", "must be between 100ms and 10m"),
        (
            "TIDINGS_NOTIFICATIONS_TRANSACTION_DURATION",
            "15s",
            "notifications.transaction_duration (15s) must be at least twice the longest "
            "timeout of a channel in use (channels.webhook.timeout, 10s)",
        ),
    ],
)
def test_settings_that_break_the_guarantees_are_refused_by_the_cli(
    variable: str, value: str, message: str
) -> None:
    env = cli_env(**{variable: value, "TIDINGS_CHANNELS_EMAIL": "webhook"})
    result = tidings("config", "show", env=env)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_only_the_channels_in_use_bound_the_lease() -> None:
    """filesystem sends need no lease margin; an instance's smtp does."""
    short = {"TIDINGS_NOTIFICATIONS_TRANSACTION_DURATION": "4s"}
    assert tidings("config", "show", env=cli_env(**short)).returncode == 0
    acme_smtp = cli_env(**short, TIDINGS_CHANNELS_INSTANCES='{"acme": {"email": "smtp"}}')
    refused = tidings("config", "show", env=acme_smtp)
    assert refused.returncode == 2
    assert "(channels.smtp.timeout, 10s)" in refused.stderr


def test_a_lease_twice_the_channel_timeouts_is_taken() -> None:
    env = cli_env(
        TIDINGS_NOTIFICATIONS_TRANSACTION_DURATION="4s",
        TIDINGS_CHANNELS_SMTP_TIMEOUT="2s",
        TIDINGS_CHANNELS_TWILIO_TIMEOUT="1s",
        TIDINGS_CHANNELS_WEBHOOK_TIMEOUT="2s",
    )
    result = tidings("config", "show", env=env)
    assert result.returncode == 0, result.stderr


def cli_env(**variables: str) -> dict[str, str]:
    return cli_clean_env(TIDINGS_DATA_DIR="/nonexistent/tidings-settings-test", **variables)
