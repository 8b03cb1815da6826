"""Inbound STARTTLS as testssl.sh sees it: Mozilla "intermediate", nothing HIGH or CRITICAL
that is the gateway's. Findings about the test certificate itself (a private CA, no
revocation URLs, its validity period) are the operator's certificate, not ours."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import trustme

from tests.support.daemon import Daemon, GatewayConfig

GRAVE = {"HIGH", "CRITICAL"}
# Properties of the certificate the operator installs, and of DNS: not the gateway's.
NOT_OURS = ("cert_", "DNS_CAArecord")


def test_testssl_finds_nothing_grave(config: GatewayConfig, daemons, tmp_path, outcome):
    testssl = shutil.which("testssl") or shutil.which("testssl.sh")
    assert testssl, "testssl (Debian package testssl.sh) is installed by scripts/setup --test"
    ca = trustme.CA()
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        tmp_path / "smtp.pem")
    config.smtp_tls = f'cert = "{tmp_path / "smtp.pem"}"\nkey = "{tmp_path / "smtp.pem"}"'
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    report = tmp_path / "testssl.json"
    done = subprocess.run(
        [testssl, "--quiet", "--color", "0", "--warnings", "off", "--starttls", "smtp",
         "--jsonfile", str(report), "-p", "-s", "-f", "-S", "-U",
         f"127.0.0.1:{config.smtp_port}"],
        capture_output=True, text=True, timeout=400, check=False)
    assert report.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    findings = json.loads(report.read_text())
    by_id = {f["id"]: f for f in findings}
    grave = [f for f in findings if f["severity"] in GRAVE and not f["id"].startswith(NOT_OURS)]
    not_ours = [f["id"] for f in findings if f["severity"] in GRAVE and f not in grave]
    outcome(f"testssl: {len(findings)} findings, {len(grave)} HIGH/CRITICAL of the gateway's; "
            f"of the test certificate: {not_ours}; curves: "
            f"{by_id.get('PFS_ECDHE_curves', {}).get('finding')}")
    assert not grave, [(f["id"], f["severity"], f["finding"]) for f in grave]
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert by_id[old]["finding"].startswith("not offered"), by_id[old]
    assert by_id["TLS1_3"]["finding"].startswith("offered")
    assert "Authentication required" not in gateway.logs()
    if by_id.get("cipherlist_AVERAGE", {}).get("severity") not in ("OK", "INFO", None):
        pytest.fail(f"obsolete ciphers offered: {by_id['cipherlist_AVERAGE']}")
