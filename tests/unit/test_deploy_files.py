"""Static checks of the deployment files (compose, .env.example, Dockerfile, Kubernetes manifests).

They need no Docker engine and no cluster: they catch the mistakes that otherwise only show up
when someone runs `docker compose up` or `kubectl apply` (a misspelt NEWSFLOW_* key is silently
ignored by pydantic-settings, so only a test like this notices it).
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.delivery.settings import DeliverySettings
from services.enrichment.settings import EnrichmentSettings
from services.ingest.settings import IngestSettings
from shared.events import Topics
from shared.settings import NewsflowSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S_DIR = ROOT / "deploy" / "k8s"

ENV_PREFIX = "NEWSFLOW_"
SERVICE_SETTINGS: dict[str, type[NewsflowSettings]] = {
    "ingest": IngestSettings,
    "enrichment": EnrichmentSettings,
    "delivery": DeliverySettings,
}
SERVICE_PORTS = {"ingest": 8001, "enrichment": 8002, "delivery": 8003}
ALL_FIELDS = frozenset().union(*(cls.model_fields for cls in SERVICE_SETTINGS.values()))
# In a container the services must listen on every interface: loopback is unreachable from outside.
ALL_INTERFACES = "0.0.0.0"


# --- helpers -----------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(compose, dict)
    return compose


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's `environment`, in either of compose's two spellings, as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def read_env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`, enough for our compose file."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if variables.get(name):
            return variables[name]
        if op and op.endswith("?"):
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return arg if op and op.endswith("-") else ""

    return INTERPOLATION.sub(replace, value)


def load_k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(K8S_DIR.glob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text()):
            documents.append((path.name, document))
    return documents


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in load_k8s_documents() if doc and doc.get("kind") == kind]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    matches = [obj for obj in k8s_objects(kind) if obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} named {name!r}, found {len(matches)}"
    return matches[0]


def k8s_env_from(pod_spec: dict[str, Any]) -> dict[str, str]:
    """The environment a pod's first container gets from its ConfigMaps and Secrets."""
    env: dict[str, str] = {}
    for source in pod_spec["containers"][0].get("envFrom", []):
        if "configMapRef" in source:
            env |= k8s_object("ConfigMap", source["configMapRef"]["name"])["data"]
        if "secretRef" in source:
            env |= k8s_object("Secret", source["secretRef"]["name"])["stringData"]
    return env


def settings_from(
    cls: type[NewsflowSettings], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> NewsflowSettings:
    """Builds the settings exactly as the service would from this environment and nothing else."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cls(_env_file=None)  # a developer's .env must not leak into the check


def unknown_keys(keys: set[str], fields: frozenset[str] | set[str]) -> list[str]:
    return sorted(
        key
        for key in keys
        if key.startswith(ENV_PREFIX) and key.removeprefix(ENV_PREFIX).lower() not in fields
    )


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with `\\` continuation lines joined and comments dropped."""
    joined, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage name (unnamed stages by index), in file order."""
    named: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for name, args in dockerfile_instructions():
        if name == "FROM":
            words = args.split()
            current = [(name, args)]
            label = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(named))
            named[label] = current
        else:
            current.append((name, args))
    return named


def final_stage() -> list[tuple[str, str]]:
    """The last stage with the stages it is built FROM, so inherited instructions count."""
    all_stages = stages()
    chain = list(all_stages.values())[-1]
    base = chain[0][1].split()[0]
    while base in all_stages:
        chain = all_stages[base] + chain
        base = all_stages[base][0][1].split()[0]
    return chain


def final_base_image() -> str:
    return final_stage()[0][1].split()[0]


# --- docker-compose.yml ------------------------------------------------------------------------


@pytest.mark.unit
def test_compose_has_the_whole_system() -> None:
    services = load_compose()["services"]

    assert {"kafka", "redis", "topics", "ingest", "enrichment", "delivery"} <= set(services)
    assert services["kafka"]["image"] == "apache/kafka:3.9.0"
    assert "healthcheck" in services["kafka"]
    assert "healthcheck" in services["redis"]


@pytest.mark.unit
def test_compose_build_paths_exist() -> None:
    builds = {
        name: service["build"]
        for name, service in load_compose()["services"].items()
        if "build" in service
    }

    assert set(SERVICE_SETTINGS) | {"topics"} <= set(builds), "our containers are built here"
    for name, build in builds.items():
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        dockerfile = "Dockerfile"
        if isinstance(build, dict):
            dockerfile = build.get("dockerfile", dockerfile)
        assert (context / dockerfile).is_file(), f"{name}: {dockerfile} not found in {context}"


@pytest.mark.unit
def test_compose_env_keys_are_real_settings() -> None:
    for name, service in load_compose()["services"].items():
        fields = SERVICE_SETTINGS[name].model_fields if name in SERVICE_SETTINGS else ALL_FIELDS
        unknown = unknown_keys(set(compose_env(service)), set(fields))
        assert not unknown, f"compose service {name}: no such setting: {unknown}"


@pytest.mark.unit
def test_compose_services_wait_for_brokers_and_topics() -> None:
    services = load_compose()["services"]

    for name in SERVICE_SETTINGS:
        conditions = {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        assert conditions == {
            "kafka": "service_healthy",
            "redis": "service_healthy",
            "topics": "service_completed_successfully",
        }, name
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"


@pytest.mark.unit
def test_compose_secrets_come_from_env_file_not_the_compose_file() -> None:
    services = load_compose()["services"]
    secrets = [("ingest", "NEWSFLOW_INGEST_API_KEYS"), ("delivery", "NEWSFLOW_ADMIN_TOKEN")]

    for name, key in secrets:
        value = compose_env(services[name])[key]
        assert re.fullmatch(rf"\$\{{{key}:\?[^}}]+\}}", value), f"{name}.{key} = {value!r}"


@pytest.mark.unit
def test_every_compose_variable_is_documented_in_env_example() -> None:
    used = set(INTERPOLATION.findall(COMPOSE_FILE.read_text()))

    missing = sorted({name for name, _, _ in used} - set(read_env_example()))
    assert not missing, f"docker-compose.yml reads these from .env; document them: {missing}"


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(SERVICE_SETTINGS))
def test_compose_environment_gives_valid_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = load_compose()["services"][name]
    variables = read_env_example()
    env = {key: interpolate(value, variables) for key, value in compose_env(service).items()}

    settings = settings_from(SERVICE_SETTINGS[name], env, monkeypatch)

    port = SERVICE_PORTS[name]
    assert getattr(settings, f"{name}_host") == ALL_INTERFACES
    assert getattr(settings, f"{name}_port") == port
    assert env["PORT"] == str(port), "the image's HEALTHCHECK must probe the port the app serves"
    assert f"{port}:{port}" in [str(mapping) for mapping in service["ports"]]
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.kafka_enable_idempotence is True
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.log_format == "json"


# --- .env.example ------------------------------------------------------------------------------


@pytest.mark.unit
def test_env_example_keys_are_real_settings() -> None:
    keys = set(read_env_example())

    assert {"NEWSFLOW_INGEST_API_KEYS", "NEWSFLOW_ADMIN_TOKEN"} <= keys
    assert not unknown_keys(keys, ALL_FIELDS)
    assert all(key.startswith((ENV_PREFIX, "DEMO_")) for key in keys), (
        "only newsflow settings (and the demo profile's DEMO_* values) belong here"
    )


# --- Dockerfile --------------------------------------------------------------------------------


@pytest.mark.unit
def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    bases = [args.split()[0] for name, args in dockerfile_instructions() if name == "FROM"]

    assert len(bases) >= 2, "build in one stage, run in another"
    assert final_base_image() == "python:3.11-slim"


@pytest.mark.unit
def test_dockerfile_final_stage_runs_as_non_root_with_healthcheck() -> None:
    stage = final_stage()
    users = [args.strip() for name, args in stage if name == "USER"]
    healthchecks = [args for name, args in stage if name == "HEALTHCHECK"]

    assert users, "the final stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert len(healthchecks) == 1
    assert "/healthz" in healthchecks[0]
    assert "${PORT}" in healthchecks[0]


@pytest.mark.unit
def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignored = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]
    sources = []
    for name, args in dockerfile_instructions():
        if name == "COPY" and "--from=" not in args:
            sources += [word for word in args.split()[:-1] if not word.startswith("--")]

    assert sources
    for source in sources:
        path = source.rstrip("/")
        assert (ROOT / path).exists(), f"Dockerfile copies {source}, which is not in the repo"
        hits = [pattern for pattern in ignored if fnmatch.fnmatch(path, pattern)]
        assert not hits, f"Dockerfile copies {source}, but .dockerignore drops it ({hits})"


# --- Kubernetes manifests ----------------------------------------------------------------------


@pytest.mark.unit
def test_every_k8s_document_has_api_version_kind_and_name() -> None:
    documents = load_k8s_documents()

    assert documents, f"no manifests in {K8S_DIR}"
    for filename, document in documents:
        assert isinstance(document, dict), f"{filename}: empty or non-mapping document"
        assert document.get("apiVersion"), filename
        assert document.get("kind"), filename
        assert (document.get("metadata") or {}).get("name"), filename


@pytest.mark.unit
def test_k8s_config_and_secret_keys_are_real_settings() -> None:
    config = k8s_object("ConfigMap", "newsflow-config")["data"]
    secret = k8s_object("Secret", "newsflow-secrets")["stringData"]

    assert not unknown_keys(set(config) | set(secret), ALL_FIELDS)
    assert {"NEWSFLOW_INGEST_API_KEYS", "NEWSFLOW_ADMIN_TOKEN"} <= set(secret)
    assert not set(config) & set(secret), "a key in both would depend on envFrom order"
    # The API server rejects a ConfigMap whose values are not strings ("true" needs its quotes).
    assert all(isinstance(value, str) for value in config.values())
    assert all(isinstance(value, str) for value in secret.values())


@pytest.mark.unit
def test_k8s_has_a_deployment_service_and_hpa_per_service() -> None:
    for name in SERVICE_SETTINGS:
        deployment = k8s_object("Deployment", name)
        service = k8s_object("Service", name)
        k8s_object("HorizontalPodAutoscaler", name)

        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert service["spec"]["selector"].items() <= pod_labels.items(), f"{name}: no endpoints"


@pytest.mark.unit
def test_k8s_deployments_probe_healthz_and_readyz() -> None:
    deployments = k8s_objects("Deployment")

    assert deployments
    for deployment in deployments:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            where = f"{deployment['metadata']['name']}/{container['name']}"
            ports = {port.get("name") for port in container.get("ports", [])}
            ports |= {port["containerPort"] for port in container.get("ports", [])}
            for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
                http_get = container.get(probe, {}).get("httpGet", {})
                assert http_get.get("path") == path, f"{where}: {probe} must GET {path}"
                assert http_get.get("port") in ports, f"{where}: {probe} probes an unknown port"
            assert container.get("resources", {}).get("requests"), f"{where}: no resource requests"


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(SERVICE_SETTINGS))
def test_k8s_environment_gives_valid_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = k8s_object("Deployment", name)["spec"]["template"]["spec"]

    settings = settings_from(SERVICE_SETTINGS[name], k8s_env_from(pod), monkeypatch)

    assert getattr(settings, f"{name}_host") == ALL_INTERFACES
    container_ports = [port["containerPort"] for port in pod["containers"][0]["ports"]]
    assert container_ports == [getattr(settings, f"{name}_port")]
    # Service links would inject e.g. NEWSFLOW_INGEST_PORT=tcp://... for a Service so named.
    assert pod.get("enableServiceLinks") is False


@pytest.mark.unit
def test_k8s_ingest_and_delivery_get_their_secrets() -> None:
    ingest = k8s_env_from(k8s_object("Deployment", "ingest")["spec"]["template"]["spec"])
    delivery = k8s_env_from(k8s_object("Deployment", "delivery")["spec"]["template"]["spec"])

    assert "NEWSFLOW_INGEST_API_KEYS" in ingest
    assert "NEWSFLOW_ADMIN_TOKEN" in delivery


@pytest.mark.unit
def test_k8s_topics_job_runs_the_cli() -> None:
    pod = k8s_object("Job", "newsflow-topics")["spec"]["template"]["spec"]

    assert pod["containers"][0]["command"] == ["newsflow", "topics", "create"]
    assert "NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS" in k8s_env_from(pod)


@pytest.mark.unit
@pytest.mark.parametrize(("name", "topic"), [("enrichment", "ingested"), ("delivery", "enriched")])
def test_k8s_consumer_hpa_stops_at_the_partition_count(name: str, topic: str) -> None:
    topics = Topics()
    partitions = {spec.name: spec.partitions for spec in topics.all()}[getattr(topics, topic)]

    hpa = k8s_object("HorizontalPodAutoscaler", name)["spec"]

    # Group members beyond the partition count get no partition and sit idle.
    assert hpa["maxReplicas"] == partitions
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}


@pytest.mark.unit
def test_compose_demo_profile_has_a_verifying_partner_and_a_seed_job() -> None:
    services = load_compose()["services"]
    partner, seed = services["partner"], services["demo-seed"]

    assert partner["profiles"] == seed["profiles"] == ["demo"]
    assert partner["build"]["target"] == "demo"
    assert "ops.sample_partner" in partner["command"]
    # The signing secret goes in the environment: a command line is readable with `ps`.
    assert not any("SECRET" in part for part in partner["command"])
    assert "DEMO_PARTNER_SECRET" in partner["environment"]["PARTNER_SECRET"]
    assert seed["command"] == ["newsflow", "demo", "seed"]
    assert seed["environment"]["DEMO_PARTNER_URL"] == "http://partner:8004/webhooks"
    assert {"kafka", "redis"}.isdisjoint(partner.get("profiles", []))
    assert "profiles" not in services["delivery"], "the core services run without a profile"
