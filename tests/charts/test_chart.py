"""The Helm chart, rendered offline by Helm's Go SDK (helm-python-sdk: no binary, no cluster)."""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path

import pytest
import yaml

from qvg_serve.serve.config import AppConfig

# The test extra installs it wherever a wheel exists (Linux x86_64, as in CI).
helm = pytest.importorskip("helm_python", reason="helm-python-sdk has wheels for Linux x86_64 only")

CHART = Path(__file__).resolve().parents[2] / "charts" / "qvg-serve"
GPU_VALUES = yaml.safe_load((CHART / "values-gpu.yaml").read_text())
SECRET_KEY = "sk-test-9f8e7d6c5b4a"
OPTIONAL = {
    "grafanaDashboard": {"enabled": True},
    "ingress": {"enabled": True},
    "monitoring": {
        "podMonitor": {"enabled": True},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
    "apiKeys": {"create": True, "keys": f"{SECRET_KEY}:acme"},
}
OPTIONAL_KINDS = {
    "PodMonitor", "ServiceMonitor", "PrometheusRule", "Service", "ConfigMap", "Ingress", "Secret"
}  # fmt: skip
# On by default: the hardening (issue 16) that a release should never forget.
DEFAULT_KINDS = ["NetworkPolicy", "PodDisruptionBudget", "RayService"]


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values=None) -> tuple[list[dict], str]:
    """Rendered objects and the whole rendered text (NOTES included)."""
    out = chart.render(values=values, name="qvg", namespace="serving")
    text = "\n".join(out.values())
    docs = [
        d
        for name, body in out.items()
        if name.endswith(".yaml")
        for d in yaml.safe_load_all(body)
        if d
    ]
    return docs, text


def only(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, [d["kind"] for d in docs]
    return found[0]


def cluster(docs):
    return only(docs, "RayService")["spec"]["rayClusterConfig"]


def serve_config(docs) -> dict:
    return yaml.safe_load(only(docs, "RayService")["spec"]["serveConfigV2"])


# ids avoid the word "gpu": tests/conftest.py skips items with a "gpu" keyword on CPU machines.
@pytest.fixture(scope="module", params=["default", "h100"])
def rendered(request, chart):
    return render(chart, None if request.param == "default" else GPU_VALUES)


def test_default_renders_the_rayservice_its_pdb_and_network_policy(chart):
    docs, _ = render(chart)
    assert sorted(d["kind"] for d in docs) == DEFAULT_KINDS
    assert only(docs, "RayService")["apiVersion"] == "ray.io/v1"


def test_head_has_no_gpu_and_no_cpus_for_replicas(rendered):
    head = cluster(rendered[0])["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (container,) = head["template"]["spec"]["containers"]
    for section in ("requests", "limits"):
        assert "nvidia.com/gpu" not in container["resources"].get(section, {})


def test_worker_group_gpu_limit_matches_replica_gpus(rendered):
    docs, _ = rendered
    (worker,) = cluster(docs)["workerGroupSpecs"]
    (container,) = worker["template"]["spec"]["containers"]
    num_gpus = serve_config(docs)["applications"][0]["args"]["deployment"]["ray_actor_options"][
        "num_gpus"
    ]
    assert num_gpus >= 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == num_gpus
    assert container["resources"]["requests"]["nvidia.com/gpu"] == num_gpus
    assert container["image"] and ":" in container["image"]


def test_serve_config_args_are_the_app_config(rendered):
    docs, _ = rendered
    (app,) = serve_config(docs)["applications"]
    assert app["import_path"] == "qvg_serve.serve.app:build_app"
    assert app["route_prefix"].startswith("/")
    (dep,) = app["deployments"]
    # what changes live is not in args (Serve hashes args: a change replaces every replica)
    assert "scheduler" not in app["args"] and set(app["args"]["deployment"]) == {
        "name",
        "ray_actor_options",
    }
    full = {**app["args"], "scheduler": dep["user_config"]["scheduler"]}
    full["deployment"] = {**app["args"]["deployment"], **_live_deployment(dep)}
    cfg = AppConfig.from_args(full)  # raises, naming the field, if the chart drifts
    cfg.engine_config(), cfg.scheduler_config()
    assert dep["name"] == cfg.deployment.name
    assert dep["ray_actor_options"] == cfg.deployment.ray_actor_options.model_dump()
    assert dep["graceful_shutdown_timeout_s"] == cfg.durability.handover_timeout_s
    scaling = cfg.deployment.autoscaling_config
    if scaling is None:
        assert dep["num_replicas"] == cfg.deployment.num_replicas
    else:
        assert "num_replicas" not in dep
        assert dep["autoscaling_config"] == scaling.model_dump()


def _live_deployment(dep: dict) -> dict:
    keys = ("num_replicas", "max_ongoing_requests", "autoscaling_config")
    return {k: dep[k] for k in keys if k in dep}


def test_serve_config_is_valid_for_ray_serve(rendered):
    schema = pytest.importorskip("ray.serve.schema", reason="ray[serve] not installed")
    deploy = schema.ServeDeploySchema
    validate = getattr(deploy, "model_validate", None) or deploy.parse_obj  # pydantic v2 / v1
    parsed = validate(serve_config(rendered[0]))
    (app,) = parsed.applications
    assert app.deployments[0].ray_actor_options.num_gpus >= 1


def test_serve_http_options_follow_the_server_config(rendered):
    docs, _ = rendered
    sc = serve_config(docs)
    server = AppConfig.from_args(sc["applications"][0]["args"]).server
    assert sc["http_options"] == {"host": server.host, "port": server.port}
    assert server.auth_enabled()  # a cluster serves 0.0.0.0: auth must be on


def test_h100_values_autoscale_workers_with_serve(chart):
    docs, _ = render(chart, GPU_VALUES)
    spec = cluster(docs)
    (worker,) = spec["workerGroupSpecs"]
    scaling = GPU_VALUES["config"]["deployment"]["autoscaling_config"]
    assert spec["enableInTreeAutoscaling"] is True
    assert (worker["minReplicas"], worker["maxReplicas"]) == (
        scaling["min_replicas"],
        scaling["max_replicas"],
    )
    assert worker["template"]["spec"]["nodeSelector"] == GPU_VALUES["worker"]["nodeSelector"]
    assert only(docs, "RayService")["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


def test_api_keys_come_from_the_secret(chart):
    docs, _ = render(chart, GPU_VALUES)
    for group in [cluster(docs)["headGroupSpec"], *cluster(docs)["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        (env,) = [e for e in container["env"] if e["name"] == "QVG_API_KEYS"]
        assert env["valueFrom"]["secretKeyRef"] == {"name": "qvg-api-keys", "key": "api-keys"}


def test_optional_objects_absent_by_default_present_when_enabled(chart):
    default_kinds = {d["kind"] for d in render(chart)[0]}
    assert not default_kinds & OPTIONAL_KINDS
    docs, _ = render(chart, OPTIONAL)
    kinds = [d["kind"] for d in docs]
    for kind in OPTIONAL_KINDS:
        assert kind in kinds, kind
    ingress = only(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == only(docs, "RayService")["metadata"]["name"] + "-serve-svc"
    dashboard = only(docs, "ConfigMap")["data"]["qvg-serve.json"]
    assert dashboard.strip() == (CHART / "dashboards" / "qvg-serve.json").read_text().strip()


def test_no_api_key_in_clear(chart):
    docs, text = render(chart, OPTIONAL)
    assert SECRET_KEY not in text
    secret = only(docs, "Secret")
    assert "stringData" not in secret
    assert base64.b64decode(secret["data"]["api-keys"]).decode() == f"{SECRET_KEY}:acme"
    (app,) = serve_config(docs)["applications"]
    assert SECRET_KEY not in yaml.safe_dump(app)


def test_default_values_hold_no_keys():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["apiKeys"]["keys"] == "" and values["apiKeys"]["create"] is False
    assert "api_keys" not in values["config"]["server"]


def test_secret_creation_without_keys_fails_clearly(chart):
    with pytest.raises(helm.HelmError, match="apiKeys.keys"):
        render(chart, {"apiKeys": {"create": True}})


def test_bad_app_config_in_values_fails_at_render_and_in_the_app(chart):
    values = copy.deepcopy(GPU_VALUES)
    values["config"]["engine"]["gpu_mem_fraction"] = 0.5
    with pytest.raises(helm.HelmValuesError, match="gpu_mem_fraction"):
        render(chart, values)  # values.schema.json (AppConfig's schema) refuses the typo
    with pytest.raises(ValueError, match="gpu_mem_fraction"):
        AppConfig.from_args(values["config"])  # and build_app would, naming the field


def test_every_values_key_is_documented():
    lines = (CHART / "values.yaml").read_text().splitlines()
    key = re.compile(r"^\s*([A-Za-z_][\w.-]*):")
    kubernetes_fields = {  # documented by their parent key
        "requests", "limits", "paths", "podSelector", "matchLabels",
        "runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile",
        "allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities",
    }  # fmt: skip
    for i, line in enumerate(lines):
        match = key.match(line)
        if match and match.group(1) not in kubernetes_fields:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#"), f"values.yaml:{i + 1} {line.strip()} has no comment"
    readme = (CHART / "README.md").read_text()
    for name in yaml.safe_load("\n".join(lines)):
        assert f"`{name}" in readme, f"README values table misses {name}"


@pytest.mark.parametrize(
    "values", [None, GPU_VALUES, OPTIONAL], ids=["default", "h100", "optional"]
)
def test_helm_lint_is_clean(values):
    report = helm.lint(CHART, values, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
