"""Signed and encrypted delivery through the real daemon, read back with `openssl cms`."""

from __future__ import annotations

import base64
import email
import email.policy
import signal
import subprocess
import time
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

from asn1crypto import cms

from tests.support.daemon import Daemon, GatewayConfig
from tests.support.pki import CA, NOW, Issued

PNG = bytes(range(256)) * 40  # binary attachment bytes, every value present


def publish(config: GatewayConfig, issued: Issued, name: str) -> tuple[Path, Path]:
    cert, key = config.root / f"{name}.pem", config.root / f"{name}.key"
    issued.write(cert, key, with_chain=False)
    (config.certs / "directory" / f"{name}.pem").write_bytes(issued.pem)
    return cert, key


def message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Lene Larsen <lela@brondby.dk>"
    msg["To"] = "Ole Elsen <olelsen@dhl.dk>, borger@example.dk"
    msg["Subject"] = "aeldreomsorg%% Vedr. din mor"
    msg["Message-ID"] = "<smime-1@brondby.dk>"
    msg.set_content("Kære Ole\n\nHun har skinnebenssår.\n", cte="8bit")
    msg.add_attachment(PNG, maintype="image", subtype="png", filename="sår.png")
    return msg.as_bytes(policy=email.policy.SMTP)


def recipient_serials(path: Path) -> set[int]:
    outer = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    der = base64.b64decode(outer.get_payload())
    enveloped = cms.ContentInfo.load(der)["content"]
    assert enveloped["encrypted_content_info"]["content_encryption_algorithm"][
        "algorithm"].native == "aes256_cbc"
    return {ri.chosen["rid"].chosen["serial_number"].native
            for ri in enveloped["recipient_infos"]}


def openssl(*args: str | Path, data: bytes) -> bytes:
    done = subprocess.run(["openssl", "cms", *map(str, args)], input=data,
                          capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def test_signed_and_encrypted_with_bcc_alone(config: GatewayConfig, daemons, ca: CA):
    ole = ca.issue("olelsen@dhl.dk")
    borger = ca.issue("borger@example.dk")
    hidden = ca.issue("skjult@example.dk")
    ole_cert, ole_key = publish(config, ole, "ole")
    publish(config, borger, "borger")
    hidden_cert, hidden_key = publish(config, hidden, "hidden")
    (config.root / "ca.pem").write_bytes(ca.pem)
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()

    assert gateway.cli("check", "olelsen@dhl.dk").returncode == 0
    status, answer = gateway.http("/api/check?address=olelsen@dhl.dk")
    result = answer["results"][0]
    assert (result["class"], result["colour"], result["label"]) == (
        "smime", "grøn", "Signeret og krypteret")
    assert result["certificate"]["serial"]

    original = message()
    gateway.send("lela@brondby.dk", ["olelsen@dhl.dk", "borger@example.dk",
                                     "skjult@example.dk"], original)
    files = gateway.wait_outbox(2)
    by_rcpt = {tuple(sorted(email.message_from_bytes(f.read_bytes()).get_all("X-Envelope-To"))):
               f for f in files}
    shared = by_rcpt[("borger@example.dk", "olelsen@dhl.dk")]
    alone = by_rcpt[("skjult@example.dk",)]
    department = config.department.cert.serial_number
    assert recipient_serials(shared) == {ole.cert.serial_number, borger.cert.serial_number,
                                         department}
    assert recipient_serials(alone) == {hidden.cert.serial_number, department}

    outer = email.message_from_bytes(shared.read_bytes(), policy=email.policy.default)
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert outer.get_param("smime-type") == "enveloped-data"
    assert b"\r\nContent-Disposition: attachment; filename=smime.p7m\r\n" in shared.read_bytes()
    assert str(outer["From"]) == '"Lene Larsen via Ældre og Omsorg" <aeldreomsorg@brondby.dk>' \
        or outer["From"].addresses[0].display_name == "Lene Larsen via Ældre og Omsorg"
    assert outer["From"].addresses[0].addr_spec == "aeldreomsorg@brondby.dk"
    assert outer["Reply-To"].addresses[0].addr_spec == "lela@brondby.dk"
    assert outer["Subject"] == "Vedr. din mor"
    assert "X-Send-Sikkert" not in outer and "Bcc" not in outer
    assert b"skinneben" not in shared.read_bytes()

    signed = openssl("-decrypt", "-recip", ole_cert, "-inkey", ole_key, data=shared.read_bytes())
    content = openssl("-verify", "-CAfile", config.root / "ca.pem", data=signed)
    inner = email.message_from_bytes(content, policy=email.policy.default)
    text = inner.get_body(("plain",)).get_content()
    assert text.startswith("Sendt sikkert via Ældre og Omsorg")
    assert "skinnebenssår" in text
    [attachment] = list(inner.iter_attachments())
    assert attachment.get_content() == PNG and attachment.get_filename() == "sår.png"
    openssl("-decrypt", "-recip", hidden_cert, "-inkey", hidden_key, data=alone.read_bytes())
    gateway.wait_queue_empty()
    assert gateway.metric("sendsikkert_recipients_total",
                          **{"class": "smime", "outcome": "delivered"}) == 3


def test_expired_certificate_bounces_with_the_reason(config: GatewayConfig, daemons, ca: CA):
    expired = ca.issue("gammel@example.dk", not_before=NOW - timedelta(days=400),
                       not_after=NOW - timedelta(days=10))
    publish(config, expired, "gammel")
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    result = gateway.cli("check", "gammel@example.dk")
    assert result.returncode == 1
    day = (NOW - timedelta(days=10)).strftime("%Y-%m-%d")
    assert f"expired {day}" in result.stdout
    data = (b"From: lela@brondby.dk\r\nTo: gammel@example.dk\r\n"
            b"Subject: aeldreomsorg%% x\r\n\r\nfortroligt\r\n")
    gateway.send("lela@brondby.dk", ["gammel@example.dk"], data)
    [dsn] = gateway.wait_outbox(1)
    report = email.message_from_bytes(dsn.read_bytes(), policy=email.policy.default)
    assert f"expired {day}" in report.get_payload()[0].get_content()
    assert report.get_payload()[1].get_payload()[1]["Status"] == "5.7.1"
    assert b"fortroligt" not in dsn.read_bytes()


def test_sighup_reloads_configuration_sepo_list_and_directory(config: GatewayConfig, daemons,
                                                              ca: CA):
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    query = "/api/check?address=a@kl.dk&address=new@example.dk&address=b@nyt.dk"

    def classes() -> list[str]:
        return [r["class"] for r in gateway.http(query)[1]["results"]]

    assert classes() == ["unsafe", "unsafe", "unsafe"]
    (config.root / "sepo.txt").write_text("ast.dk\nkl.dk\n")
    publish(config, ca.issue("new@example.dk"), "new")
    text = config.path.read_text()
    config.path.write_text(text.replace('internal_domains = ["brondby.dk"]',
                                        'internal_domains = ["brondby.dk", "nyt.dk"]'))
    gateway.signal(signal.SIGHUP)
    wait_for(lambda: classes() == ["tunnel", "smime", "internal"], gateway)
    assert gateway.metric("sendsikkert_sepo_domains") == 2

    config.path.write_text("[smtp\nbroken")  # a bad reload keeps the running configuration
    gateway.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in gateway.logs(), gateway)
    assert classes() == ["tunnel", "smime", "internal"]
    assert gateway.http("/healthz")[0] == 200


def wait_for(predicate, gateway: Daemon, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(gateway.logs()[-3000:])
