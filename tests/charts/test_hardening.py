"""The chart's hardening (issue 16): non-root read-only pods, a PDB, a private dashboard, only the
public API behind the Ingress, API keys as a rotatable file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk has wheels for Linux x86_64 only")

CHART = Path(__file__).resolve().parents[2] / "charts" / "qvg-serve"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
GPU_VALUES = yaml.safe_load((CHART / "values-gpu.yaml").read_text())
AUTOSCALE = {
    "config": {"deployment": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2}}}
}
PUBLIC = {"/v1/streams", "/v1/health", "/ui", "/docs", "/openapi.json"}
PRIVATE = ("/metrics", "/v1/capacity")


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values=None) -> list[dict]:
    out = chart.render(values=values, name="qvg", namespace="serving")
    return [d for n, b in out.items() if n.endswith(".yaml") for d in yaml.safe_load_all(b) if d]


def of_kind(docs, kind) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def pods(docs) -> list[dict]:
    spec = of_kind(docs, "RayService")[0]["spec"]["rayClusterConfig"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


@pytest.fixture(scope="module", params=["default", "h100", "autoscale"])
def docs(request, chart):
    return render(
        chart, {"default": None, "h100": GPU_VALUES, "autoscale": AUTOSCALE}[request.param]
    )


def test_every_ray_container_is_non_root_read_only_without_capabilities(docs):
    uid = VALUES["podSecurityContext"]["runAsUser"]
    for pod in pods(docs):
        ctx = pod["spec"]["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == uid != 0
        assert ctx["runAsGroup"] == ctx["fsGroup"] != 0
        for container in pod["spec"]["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]


def test_ray_writes_only_to_mounted_emptydirs(docs):
    for pod in pods(docs):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        for container in pod["spec"]["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]  # /tmp/ray: Ray's session dir
            env = {e["name"]: e.get("value", "") for e in container["env"]}
            assert env["XDG_CACHE_HOME"].startswith("/tmp/")
            assert env["TRITON_CACHE_DIR"].startswith("/tmp/")


def test_autoscaler_sidecar_is_hardened_too(chart):
    options = of_kind(render(chart, AUTOSCALE), "RayService")[0]["spec"]["rayClusterConfig"][
        "autoscalerOptions"
    ]
    assert options["securityContext"] == VALUES["securityContext"]
    assert {"name": "tmp", "mountPath": "/tmp"} in options["volumeMounts"]


def test_pdb_covers_the_engine_workers_only(docs):
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    selector = pdb["spec"]["selector"]["matchLabels"]
    head, *workers = pods(docs)
    assert workers and all(selector.items() <= w["metadata"]["labels"].items() for w in workers)
    assert not selector.items() <= head["metadata"]["labels"].items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_dashboard_is_reachable_only_by_the_operator(chart):
    docs = render(
        chart, {"head": {"rayStartParams": {"num-cpus": "8", "dashboard-host": "10.0.0.1"}}}
    )
    params = of_kind(docs, "RayService")[0]["spec"]["rayClusterConfig"]["headGroupSpec"][
        "rayStartParams"
    ]
    assert params == {"num-cpus": "0", "dashboard-host": "10.0.0.1"}  # num-cpus stays forced
    (policy,) = of_kind(render(chart), "NetworkPolicy")
    (dashboard,) = [
        r
        for r in policy["spec"]["ingress"]
        if {"port": 8265, "protocol": "TCP"} in r.get("ports", [])
    ]
    assert dashboard["from"] == VALUES["networkPolicy"]["operatorFrom"] != []
    selector = dashboard["from"][0]["podSelector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/component": "kuberay-operator"}


def routed(docs) -> set[str]:
    (ingress,) = of_kind(docs, "Ingress")
    return {p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}


def test_ingress_routes_the_public_api_only(chart):
    assert routed(render(chart, {"ingress": {"enabled": True}})) == PUBLIC
    prefixed = routed(
        render(chart, {"ingress": {"enabled": True}, "serve": {"routePrefix": "/qvg"}})
    )
    assert prefixed == {f"/qvg{p}" for p in PUBLIC}


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/", "Prefix"), ("/v1", "Prefix"), ("/v1/", "ImplementationSpecific"), ("/metrics", "Exact")],
)
def test_ingress_refuses_paths_that_reach_private_endpoints(chart, path, kind):
    values = {"ingress": {"enabled": True, "paths": [{"path": path, "pathType": kind}]}}
    with pytest.raises(helm.HelmError, match="never exposes"):
        render(chart, values)


def test_ingress_hosts_with_their_own_paths_fail_instead_of_being_ignored(chart):
    values = {"ingress": {"enabled": True, "hosts": [{"host": "a.example", "paths": []}]}}
    with pytest.raises(helm.HelmError, match="ingress.paths"):
        render(chart, values)


def test_api_keys_as_a_file_for_rotation(chart):
    values = {"apiKeys": {"existingSecret": "qvg-api-keys", "mountFile": True}}
    for pod in pods(render(chart, values)):
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "api-keys"]
        assert volume["secret"]["secretName"] == "qvg-api-keys"
        assert "subPath" not in str(pod)  # a subPath mount would never see the rotated Secret
        assert volume["secret"]["defaultMode"] == 0o440  # group-readable: fsGroup
        for container in pod["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["QVG_API_KEYS_FILE"]["value"] == "/etc/qvg-serve/api-keys/api-keys"
            (mount,) = [m for m in container["volumeMounts"] if m["name"] == "api-keys"]
            assert mount == {
                "name": "api-keys",
                "mountPath": "/etc/qvg-serve/api-keys",
                "readOnly": True,
            }
    for pod in pods(render(chart, {"apiKeys": {"existingSecret": "qvg-api-keys"}})):
        assert "api-keys" not in {v["name"] for v in pod["spec"]["volumes"]}
