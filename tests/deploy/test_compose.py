"""docker-compose.yml without Docker (none runs on these machines): valid YAML naming the
services the demo needs, every file it mounts there, and the services pointing at each
other by the names and ports the others actually use."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
import yaml

from gateway.config import load

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "docker-compose.yml"
NEEDED = {"gateway", "ldap", "prometheus", "grafana", "mailpit"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def services() -> dict[str, dict]:
    return compose()["services"]


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume entry, `:ro` and the like dropped."""
    out = []
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        out.append((source, target))
    return out


def host_path(service: dict, container_path: str) -> Path:
    """The file on the host a bind mount shows at `container_path`."""
    for source, target in mounts(service):
        if source.startswith(".") and container_path.startswith(target + "/"):
            return ROOT / source / container_path.removeprefix(target + "/")
    raise AssertionError(f"{container_path} is not in a bind mount")


def test_the_compose_file_names_the_demo_s_services():
    assert set(services()) >= NEEDED
    for name, service in services().items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", {}):
            assert dependency in services(), (name, dependency)


def test_every_mounted_file_and_build_context_exists():
    declared = set(compose().get("volumes", {}))
    for name, service in services().items():
        for source, _ in mounts(service):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), (name, source)
            else:
                assert source in declared, (name, source)
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file(), name
    for secret in compose().get("secrets", {}).values():
        assert (ROOT / secret["file"]).is_file()


def test_ports_are_published_on_loopback_only():
    for name, service in services().items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_the_gateway_delivers_to_mailpit_and_is_scraped_by_prometheus():
    gateway = services()["gateway"]
    config = load(host_path(gateway, gateway["environment"]["SEND_SIKKERT_CONFIG"]))
    assert config.routes.internal == config.routes.default == "smtp://mailpit:1025"
    assert config.http.listen is not None
    http_port = config.http.listen.port
    assert f"127.0.0.1:{http_port}:{http_port}" in gateway["ports"]
    assert f"127.0.0.1:{config.smtp.listen[0].port}:{config.smtp.listen[0].port}" \
        in gateway["ports"]
    prometheus = services()["prometheus"]
    scrape = yaml.safe_load(host_path(prometheus, "/etc/prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"] == [
        {"targets": [f"gateway:{http_port}"]}]
    assert host_path(prometheus, "/etc/prometheus/alerts.yml").is_file()


def test_mailpit_offers_starttls_with_the_certificate_the_certs_service_writes():
    mailpit, certs = services()["mailpit"], services()["certs"]
    environment = mailpit["environment"]
    certs_volume = dict(mounts(mailpit))["certs"]
    assert environment["MP_SMTP_TLS_CERT"] == f"{certs_volume}/mailpit/tls.pem"
    assert environment["MP_SMTP_TLS_KEY"] == f"{certs_volume}/mailpit/tls.key"
    [command] = certs["command"]
    assert "certs dev-init" in command and "tls-cert.sh /opt/send-sikkert/certs mailpit" in command
    assert dict(mounts(certs))["certs"] == "/opt/send-sikkert/certs"
    assert host_path(certs, "/opt/send-sikkert/deploy/mailpit/tls-cert.sh").is_file()
    gateway = services()["gateway"]
    config = load(host_path(gateway, gateway["environment"]["SEND_SIKKERT_CONFIG"]))
    # The gateway verifies tunnel peers against the dev CA, which sits in the certs volume.
    assert config.sepo.ca_file is not None and config.sepo.ca_file.parts[-2:] == ("dev",
                                                                                  "ca.pem")


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard():
    grafana = services()["grafana"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home).is_file()
    source = yaml.safe_load(host_path(
        grafana, "/etc/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(host_path(
        grafana, "/etc/grafana/provisioning/dashboards/send-sikkert.yml").read_text())
    assert dict((t, s) for s, t in mounts(grafana))[
        provider["providers"][0]["options"]["path"]] == "./deploy/grafana/dashboards"


@pytest.mark.parametrize("name", ["gateway.toml", "ldap-demo.toml"])
def test_the_image_s_default_spool_lies_in_its_volume(name: str):
    """The Dockerfile's VOLUME holds spool.dir of the configurations the image ships."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    [volume] = [line for line in dockerfile.splitlines() if line.startswith("VOLUME")]
    volume_dir = yaml.safe_load(volume.removeprefix("VOLUME"))[0]
    spool = tomllib.loads((ROOT / "policies" / name).read_text())["spool"]["dir"]
    in_image = Path(os.path.normpath(f"/opt/send-sikkert/policies/{spool}"))
    assert in_image.is_relative_to(volume_dir)
