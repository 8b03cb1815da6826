"""The README's demo: `certs dev-init`, then `send-sikkert serve` with no arguments from the
repository root, a tagged mail in, and the outcome in the `file:` outbox and in a DSN."""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import sample
from tests.support.daemon import SCRIPT
from tests.support.identifiers import without_identifiers
from tests.support.ports import fixed_ports
from tests.support.waiting import until

ROOT = Path(__file__).parents[2]


def demo_ports() -> tuple[int, int]:
    config = tomllib.loads((ROOT / "policies" / "gateway.toml").read_text(encoding="utf-8"))
    smtp_port = int(config["smtp"]["listen"][0].rsplit(":", 1)[1])
    return smtp_port, int(config["http"]["listen"].rsplit(":", 1)[1])


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the repository's demo parts, so the test never touches the real var/."""
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    return tmp_path


def wait_https(port: int, ca: Path, proc: subprocess.Popen, log: Path) -> None:
    """The demo's HTTP listener speaks HTTPS with dev-init's certificate."""
    context = ssl.create_default_context(cafile=ca)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", timeout=1,
                                   context=context)
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(log.read_text())


def delivered(outbox: Path, log: Path, count: int) -> list[Path]:
    """The outbox's files once `count` are delivered in full. A file is there from its
    creation, before it is written; the daemon's "delivered ... relay=.../NAME" line comes
    after its write and fsync."""
    def done() -> bool:
        text = log.read_text(errors="replace")
        return sum(f.name in text for f in outbox.glob("*.eml")) >= count

    until(done, lambda: log.read_text(errors="replace")[-3000:], within=20)
    return sorted(outbox.glob("*.eml"))


def test_dev_init_into_another_folder(checkout: Path):
    out = checkout / "elsewhere"
    result = subprocess.run([SCRIPT, "certs", "dev-init", "--dir", str(out)], cwd=checkout,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (out / "dev" / "ca.pem").exists() and (out / "trust" / "dev-ca.pem").exists()
    assert sorted(p.name for p in (out / "directory").glob("*.pem")) == [
        "borger_at_example.dk.pem", "olelsen_at_dhl.dk.pem"]


def test_demo_runs_from_the_repository_root(checkout: Path):
    env = {k: v for k, v in os.environ.items() if k != "SEND_SIKKERT_CONFIG"}
    init = subprocess.run([SCRIPT, "certs", "dev-init"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    assert (checkout / "certs" / "dev" / "aeldreomsorg.pem").exists()

    smtp_port, http_port = demo_ports()
    with fixed_ports(smtp_port, http_port):  # the demo's own: one such test at a time
        serve_the_demo(checkout, env, smtp_port, http_port)


def serve_the_demo(checkout: Path, env: dict[str, str], smtp_port: int, http_port: int) -> None:
    log = checkout / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([SCRIPT, "serve"], cwd=checkout, env=env, stderr=err)
    try:
        ca = checkout / "certs" / "dev" / "ca.pem"
        wait_https(http_port, ca, proc, log)
        with urllib.request.urlopen(f"https://localhost:{http_port}/addin/manifest.xml",
                                    context=ssl.create_default_context(cafile=ca)) as answer:
            assert b"https://localhost:8025/addin/taskpane.html" in answer.read()
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            client.sendmail("lela@brondby.dk", ["olelsen@dhl.dk", "hm@hotmail.dk"],
                            sample("03-cpr-and-health-tagged.eml").replace(b", bolig 127", b""))
        outbox = checkout / "var" / "outbox"
        files = delivered(outbox, log, 2)
        assert len(files) == 2, log.read_text()
        messages = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
                    for f in files]
        kinds = sorted(m.get_content_type() for m in messages)
        assert kinds == ["application/pkcs7-mime", "multipart/report"]
        encrypted = files[[m.get_content_type() for m in messages].index(
            "application/pkcs7-mime")]
        certs = checkout / "certs"
        signed = subprocess.run(
            ["openssl", "cms", "-decrypt", "-recip", str(next(
                (certs / "directory").glob("olelsen*.pem"))),
             "-inkey", str(certs / "dev" / "recipients" / "olelsen@dhl.dk.key")],
            input=encrypted.read_bytes(), capture_output=True, check=True).stdout
        content = subprocess.run(["openssl", "cms", "-verify", "-CAfile",
                                  str(certs / "dev" / "ca.pem")],
                                 input=signed, capture_output=True, check=True).stdout
        assert content.decode().count("Sendt sikkert via Ældre og Omsorg") == 1
        assert "220910-1234" in content.decode()  # the body is there, for the recipient

        # The README's safety net: untagged, with a CPR number, to an unsafe address.
        untagged = (b"From: lela@brondby.dk\r\nTo: hm@hotmail.dk\r\nSubject: Vedr. din mor\r\n"
                    b"\r\nDin mor, cpr. 220910-1234, har skinnebenssaar.\r\n")
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            client.sendmail("lela@brondby.dk", ["hm@hotmail.dk"], untagged)
        [dsn] = [f for f in delivered(outbox, log, 3) if f not in files]
        assert b"Subject: Ikke afleveret: CPR-nummer" in dsn.read_bytes()
        assert b"1234" not in without_identifiers(dsn.read_bytes())
        scan = subprocess.run([SCRIPT, "scan", str(dsn)], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=60)
        assert scan.returncode == 0, scan.stdout  # nothing left to find in the DSN
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
