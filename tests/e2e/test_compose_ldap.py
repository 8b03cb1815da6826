"""The compose demo's directory without Docker: deploy/ldap's entrypoint and seed script
run a real slapd on loopback, and `send-sikkert check` with policies/ldap-demo.toml
gives each seeded address its colour."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import SCRIPT
from tests.support.sink import free_port

ROOT = Path(__file__).parents[2]
LDAP = ROOT / "deploy" / "ldap"
PASSWORD = "demo-admin-password"


@pytest.fixture
def directory_service() -> Iterator[str]:
    """deploy/ldap/entrypoint.sh on a loopback port; slapd runs as `openldap`, so its
    data folder sits outside pytest's private temporary folders."""
    data = Path(tempfile.mkdtemp(prefix="send-sikkert-ldap-"))
    data.chmod(0o755)
    port = free_port()
    url = f"ldap://127.0.0.1:{port}"
    env = {**os.environ, "LDAP_DATA_DIR": str(data / "ldap"), "LDAP_URLS": url,
           "LDAP_ROOT_PASSWORD": PASSWORD, "LDAP_DEBUG": "0"}
    proc = subprocess.Popen(["sh", str(LDAP / "entrypoint.sh")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "slapd did not start"
                time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def test_compose_directory_gives_the_right_colours(tmp_path: Path, directory_service: str):
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    config = tmp_path / "policies" / "ldap-demo.toml"
    config.write_text(config.read_text(encoding="utf-8")
                      .replace("ldap://ldap:389", directory_service)
                      .replace("/run/secrets/ldap-gateway-password",
                               str(LDAP / "gateway-password")), encoding="utf-8")
    env = {**os.environ, "SEND_SIKKERT_CONFIG": str(config)}
    subprocess.run([SCRIPT, "certs", "dev-init"], env=env, check=True, capture_output=True)
    seed = subprocess.run(["sh", str(LDAP / "seed.sh")], capture_output=True, text=True,
                          env={**env, "LDAP_URL": directory_service,
                               "LDAP_ROOT_PASSWORD": PASSWORD,
                               "CERTS_DIR": str(tmp_path / "certs" / "directory")})
    assert seed.returncode == 0, seed.stderr
    assert "olelsen@dhl.dk" in seed.stdout

    found = subprocess.run([SCRIPT, "check", "olelsen@dhl.dk", "borger@example.dk"],
                           env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stdout + found.stderr
    assert [line.split("\t")[1:3] for line in found.stdout.splitlines()] == [
        ["smime", "grøn"], ["smime", "grøn"]]
    missing = subprocess.run([SCRIPT, "check", "uden.certifikat@example.dk"], env=env,
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "\tunsafe\trød\t" in missing.stdout
