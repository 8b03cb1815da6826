"""deploy/kubernetes and its PostgreSQL overlay: rendered, validated, and able to run.

`kubectl kustomize` renders both; kubernetes-validate checks every object strictly
against the newest Kubernetes schema it ships. Then the rendered ConfigMaps and Secrets
are laid out as the StatefulSet mounts them, and `send-sikkert config check` must accept
the configuration they make (with a real department certificate put in the Secret by an
overlay, the way an operator would). There is no cluster here: nothing is applied.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml

from tests.support.daemon import SCRIPT
from tests.support.pki import CA

DEPLOY = Path(__file__).parents[2] / "deploy"
BASE = DEPLOY / "kubernetes"
OVERLAY = DEPLOY / "kubernetes-postgresql"
VALID, CONFIG_ERROR = 0, 2
DATA_TIMEOUT = 600  # seconds the gateway waits for a next hop's reply to DATA


def render(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing: these machines come with it")
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"].startswith(name))]
    return doc


@pytest.mark.parametrize("path", [BASE, OVERLAY], ids=["base", "postgresql"])
def test_every_object_is_valid_kubernetes(path: Path):
    docs = render(path)
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    assert {d["kind"] for d in docs} == {"StatefulSet", "Service", "ConfigMap", "Secret",
                                         "PodDisruptionBudget", "NetworkPolicy"}


def test_the_statefulset_keeps_a_queue_per_node_and_stops_gracefully():
    docs = render(BASE)
    sts = one(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["spool"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config = (BASE / "config" / "gateway.toml").read_text()
    assert f'dir = "{mounts["spool"]}/queue"' in config
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] > DATA_TIMEOUT
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    selector = sts["spec"]["selector"]["matchLabels"]
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert one(docs, "Service", "send-sikkert-nodes")["spec"]["clusterIP"] == "None"
    assert one(docs, "Service", "send-sikkert-http")["spec"]["type"] == "ClusterIP"


def test_the_http_api_is_kept_inside():
    policy = one(render(BASE), "NetworkPolicy")["spec"]
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["ingress"]}
    assert "from" not in by_port["smtp"]  # SMTP from wherever the Service lets in
    assert by_port["http"]["from"]  # HTTP only from the listed peers


def test_the_overlay_runs_three_nodes_on_one_database():
    docs = render(OVERLAY)
    assert one(docs, "StatefulSet")["spec"]["replicas"] == 3
    toml = one(docs, "ConfigMap", "send-sikkert-config")["data"]["gateway.toml"]
    assert 'database = "postgresql://' in toml and "database_password_file" in toml
    assert "sepo.txt" in one(docs, "ConfigMap", "send-sikkert-config")["data"]


def lay_out(docs: list[dict], root: Path) -> Path:
    """Write what each volume of the pod holds where the container mounts it, under `root`.

    Absolute paths in the configuration that lie in a mount move under `root` with it.
    Returns the configuration file.
    """
    sts = one(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    [container] = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        target = root / PurePosixPath(mount["mountPath"]).relative_to("/")
        target.mkdir(parents=True, exist_ok=True)
        volume = volumes.get(mount["name"], {})
        if "configMap" in volume:
            source = one(docs, "ConfigMap", volume["configMap"]["name"])
            for key, value in source.get("data", {}).items():
                (target / key).write_text(value)
        elif "secret" in volume:
            source = one(docs, "Secret", volume["secret"]["secretName"])
            for key, value in source.get("stringData", {}).items():
                (target / key).write_text(value)
            for key, value in source.get("data", {}).items():
                (target / key).write_bytes(base64.b64decode(value))
    [env] = [e for e in container["env"] if e["name"] == "SEND_SIKKERT_CONFIG"]
    config = root / PurePosixPath(env["value"]).relative_to("/")
    text = config.read_text()
    for mount in container["volumeMounts"]:
        text = text.replace(f'"{mount["mountPath"]}/', f'"{root}{mount["mountPath"]}/')
    config.write_text(text)
    return config


def config_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, "--config", str(config), "config", "check"],
                          capture_output=True, text=True, timeout=60)


def operator_overlay(tmp_path: Path, ca: CA) -> Path:
    """What an operator puts on top: trust anchors, the department's key, the password."""
    tree = tmp_path / "deploy"
    shutil.copytree(DEPLOY, tree)
    mine = tree / "mine"
    mine.mkdir()
    ca.issue("aeldreomsorg@example.dk").write(mine / "aeldreomsorg.pem",
                                               mine / "aeldreomsorg.key")
    (mine / "database-password").write_text("s3cret\n")
    (mine / "partner-ca.pem").write_bytes(ca.pem)
    (mine / "kustomization.yaml").write_text("""
resources: [../kubernetes-postgresql]
configMapGenerator:
  - name: send-sikkert-trust
    behavior: replace
    files: [partner-ca.pem]
secretGenerator:
  - name: send-sikkert-departments
    behavior: replace
    files: [aeldreomsorg.pem, aeldreomsorg.key]
  - name: send-sikkert-passwords
    behavior: replace
    files: [database-password]
""")
    return mine


def test_the_rendered_configuration_is_one_the_gateway_accepts(tmp_path: Path, ca: CA):
    docs = render(operator_overlay(tmp_path, ca))
    result = config_check(lay_out(docs, tmp_path / "pod"))
    assert result.returncode == VALID, result.stderr
    assert "1 department(s)" in result.stderr


def test_the_placeholder_secrets_refuse_to_start(tmp_path: Path):
    result = config_check(lay_out(render(BASE), tmp_path / "pod"))
    assert result.returncode == CONFIG_ERROR
    assert "departments[0]" in result.stderr
