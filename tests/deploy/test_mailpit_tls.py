"""deploy/mailpit/tls-cert.sh: the compose demo's next hop gets a STARTTLS certificate from
the development CA, which the gateway's tunnel class (verified TLS) then accepts."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from gateway.delivery import Rcpt, TlsPolicy, parse_route
from gateway.delivery.smtp import SmtpTransport
from tests.support.daemon import SCRIPT
from tests.support.sink import SmtpSink

ROOT = Path(__file__).parents[2]
SCRIPT_SH = ROOT / "deploy" / "mailpit" / "tls-cert.sh"
OK = 250


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`certs dev-init` as the compose `certs` service runs it, then tls-cert.sh."""
    root = tmp_path_factory.mktemp("compose")
    shutil.copytree(ROOT / "policies", root / "policies")
    subprocess.run([SCRIPT, "--config", str(root / "policies" / "ldap-demo.toml"), "certs",
                    "dev-init"], check=True, capture_output=True, timeout=120)
    done = subprocess.run(["sh", str(SCRIPT_SH), str(root / "certs"), "localhost", "mailpit"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return root / "certs"


def test_a_current_certificate_is_kept(certs: Path):
    before = (certs / "mailpit" / "tls.pem").read_bytes()
    done = subprocess.run(["sh", str(SCRIPT_SH), str(certs), "localhost", "mailpit"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert "keeping" in done.stdout
    assert (certs / "mailpit" / "tls.pem").read_bytes() == before


async def test_the_tunnel_level_verifies_the_next_hop_certificate(certs: Path):
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(certs / "mailpit" / "tls.pem", certs / "mailpit" / "tls.key")
    tunnel = TlsPolicy("verify", certs / "dev" / "ca.pem", "1.2")
    async with SmtpSink(tls=server) as sink:
        result = await SmtpTransport("gw.brondby.test", timeout=10).deliver(
            parse_route(f"smtp://localhost:{sink.port}"), "ast.dk", "lela@brondby.dk",
            [Rcpt("sikkermail@ast.dk")], b"Subject: Hej\r\n\r\nHej\r\n", tunnel,
            queue_id="Q1")
    assert {a: r.code for a, r in result.replies.items()} == {"sikkermail@ast.dk": OK}
    assert sink.messages[0].tls and result.tls_version
