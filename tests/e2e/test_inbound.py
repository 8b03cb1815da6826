"""Inbound mail through the real daemon: a safe MX, decrypted replies, learnt certificates.

The partner outside writes with `openssl cms` and `gpgsm` (tests/support/partner.py) and
connects from 127.0.0.9, outside `relay_networks`; the internal route is the outbox.
"""

from __future__ import annotations

import email
import email.policy
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from tests.support.daemon import Daemon, GatewayConfig, start
from tests.support.partner import Partner, body_der, crlf, text_entity
from tests.support.pki import CA, NOW

OK = 250
RELAY_DENIED = 554
BAD_ADDRESS = 553
TOO_BIG = 552
EXIT_OK, EXIT_REFUSED = 0, 1
STRANGER = "127.0.0.9"  # a client outside relay_networks
DEPARTMENT = "aeldreomsorg@brondby.dk"
RECEIVED = "X-Send-Sikkert-Received"
INBOUND = "[inbound]\nenabled = true\nharvest = \"{harvest}\"\nreply_map = \"{replies}\"\n"


def inbound(config: GatewayConfig, **keys: str) -> None:
    """Turn the MX on: strangers may send to brondby.dk; learnt certificates and replies."""
    config.relay_networks = ["127.0.0.1/32"]
    config.extra = INBOUND.format(harvest=config.root / "learnt",
                                  replies=config.root / "replies")
    config.extra += "".join(f"{k} = {v}\n" for k, v in keys.items())


def delivered(gateway: Daemon, count: int) -> dict[str, EmailMessage]:
    """The messages in the outbox by Subject, once there are `count`."""
    found = {}
    for path in gateway.wait_outbox(count):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        found[str(message["Subject"])] = message
    return found


def received(message: EmailMessage) -> str:
    values = message.get_all(RECEIVED) or []
    assert len(values) == 1, values
    return str(values[0])


def openssl_verify(data: bytes, ca: CA, tmp: Path) -> subprocess.CompletedProcess[bytes]:
    (tmp / "ca.pem").write_bytes(ca.pem)
    return subprocess.run(["openssl", "cms", "-verify", "-CAfile", str(tmp / "ca.pem")],
                          input=data, capture_output=True, check=False, timeout=60)


@pytest.fixture
def partner(tmp_path: Path, ca: CA) -> Iterator[Partner]:
    """Ole at a partner outside, with a certificate from a CA the gateway trusts."""
    ole = Partner(tmp_path / "ole", ca.issue("ole@partner.dk"), ca)
    yield ole
    ole.close()


def test_a_stranger_may_send_to_internal_recipients_and_nowhere_else(config, daemons):
    inbound(config)
    config.max_message_size = 100_000
    gateway = start(config, daemons)
    with gateway.smtp(STRANGER) as client:
        assert client.mail("ole@partner.dk")[0] == OK
        for relay in ("hm@hotmail.dk", "hm@brondby.dk.hotmail.dk", "hm@xbrondby.dk",
                      "hm%hotmail.dk@brondby.dk", "hm!hotmail.dk@brondby.dk",
                      "@brondby.dk:hm@hotmail.dk", '"hm@hotmail.dk"@brondby.dk'):
            code, reply = client.rcpt(relay)
            assert code in (RELAY_DENIED, BAD_ADDRESS), (relay, code, reply)
            assert code == BAD_ADDRESS or b"5.7.1" in reply
        assert client.rcpt("lela@brondby.dk")[0] == OK
        assert client.rcpt("Lela@BRONDBY.DK")[0] == OK
        code, _ = client.data(b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 1100)
        assert code == TOO_BIG  # limits apply to strangers as to anyone
    with gateway.smtp() as client:  # relay_networks may still send anywhere
        client.mail("lela@brondby.dk")
        assert client.rcpt("hm@hotmail.dk")[0] == OK
    assert gateway.metric("sendsikkert_smtp_rejections_total", reason="relay_denied") == 3


def test_without_inbound_a_stranger_may_send_nothing(config, daemons):
    config.relay_networks = ["127.0.0.1/32"]
    gateway = start(config, daemons)
    with gateway.smtp(STRANGER) as client:
        client.mail("ole@partner.dk")
        code, reply = client.rcpt("lela@brondby.dk")
        assert code == RELAY_DENIED and b"5.7.1" in reply


def test_mail_from_outside_is_never_tagged_and_forged_labels_are_removed(config, daemons):
    inbound(config)
    gateway = start(config, daemons)
    forged = (b"From: ole@partner.dk\r\nTo: lela@brondby.dk\r\nSubject: aeldreomsorg%% hej\r\n"
              b"X-Send-Sikkert: yes\r\nx-send-sikkert-received: decrypted=aeldreomsorg; "
              b"signature=valid;\r\n signer=chef@brondby.dk\r\n\r\nHej Lene\r\n")
    gateway.send("ole@partner.dk", ["lela@brondby.dk"], forged, source=STRANGER)
    [path] = gateway.wait_outbox(1)
    data = path.read_bytes()
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message["X-Envelope-To"] == "lela@brondby.dk"
    assert b"X-Send-Sikkert" not in data.split(b"\r\n\r\n", 1)[0].replace(b"X-Envelope", b"")
    assert "signer=chef" not in data.decode()
    assert message["Subject"] == "aeldreomsorg%% hej"  # not a tag: left as the stranger wrote
    assert data.endswith(b"\r\n\r\nHej Lene\r\n")
    gateway.wait_queue_empty()
    assert gateway.metric("sendsikkert_messages_received_total", tagged="false") == 1
    assert gateway.metric("sendsikkert_inbound_total", result="plain", signature="none") == 1
    assert gateway.metric("sendsikkert_recipients_total",
                          **{"class": "plain", "outcome": "delivered"}) == 1


def test_replies_from_openssl_and_gpgsm_are_decrypted(config, daemons, partner, ca, tmp_path):
    inbound(config)
    gateway = start(config, daemons)
    department = config.department.cert
    other = ca.issue("someone@else.dk")
    text = "Tak for sidst.\nHun har det bedre.\n"
    entity = text_entity(text)
    signed = partner.sign(entity)
    broken = signed.replace(b"bedre", b"ringere")
    cases: dict[str, tuple[bytes, str]] = {
        "signed and encrypted": (partner.encrypt(signed, [department]),
                                 "decrypted=aeldreomsorg; signature=valid; signer=ole@partner.dk"),
        "encrypted only": (partner.encrypt(entity, [department]),
                           "decrypted=aeldreomsorg; signature=none"),
        "broken signature": (partner.encrypt(broken, [department]),
                             "decrypted=aeldreomsorg; signature=invalid; signer=ole@partner.dk"),
        "to someone else": (partner.encrypt(signed, [other.cert]),
                            "not-decrypted; reason=not-for-a-department"),
        "aes-gcm": (partner.encrypt(signed, [department], cipher="aes-128-gcm"),
                    "decrypted=aeldreomsorg; signature=valid; signer=ole@partner.dk"),
        "oaep and key id": (partner.encrypt(signed, [other.cert, department], oaep=True,
                                            keyid=True, cipher="aes192"),
                            "decrypted=aeldreomsorg; signature=valid; signer=ole@partner.dk"),
        "opaque signed": (partner.encrypt(partner.sign(entity, opaque=True), [department]),
                          "decrypted=aeldreomsorg; signature=valid; signer=ole@partner.dk"),
        "gpgsm signed and encrypted": (
            partner.gpgsm_encrypt(partner.gpgsm_sign(entity), [department]),
            "decrypted=aeldreomsorg; signature=valid; signer=ole@partner.dk"),
        "gpgsm encrypted only": (partner.gpgsm_encrypt(entity, [department], cipher="AES128"),
                                 "decrypted=aeldreomsorg; signature=none"),
    }
    for subject, (body, _) in cases.items():
        mail = partner.mail(body, to="Lene Larsen <lela@brondby.dk>", subject=subject)
        gateway.send(partner.address, ["lela@brondby.dk"], mail, source=STRANGER)
    messages = delivered(gateway, len(cases))
    for subject, (body, label) in cases.items():
        message = messages[subject]
        assert received(message) == label, subject
        assert message["From"].addresses[0].addr_spec == "ole@partner.dk"
        assert message["To"].addresses[0].addr_spec == "lela@brondby.dk"
        assert message["Message-ID"] and message["Date"]
        raw = message.as_bytes()
        if label.startswith("not-decrypted"):
            assert message.get_content_type() == "application/pkcs7-mime"
            assert body_der(raw) == body_der(body)  # untouched, still encrypted
            continue
        assert b"application/pkcs7-mime; smime-type=enveloped-data" not in raw
        if "signature=none" in label:
            assert message.get_content().replace("\r\n", "\n") == text
            continue
        # The signature is left for the mail client: openssl still verifies it, or refuses
        # it exactly where the content was changed.
        checked = openssl_verify(crlf(raw), ca, tmp_path)
        if "invalid" in label:
            assert checked.returncode != 0
        else:
            assert checked.returncode == 0, (subject, checked.stderr)
            assert text.replace("\n", "\r\n").encode() in checked.stdout
    gateway.wait_queue_empty()
    assert gateway.metric("sendsikkert_inbound_total", result="decrypted",
                          signature="valid") == 5
    assert gateway.metric("sendsikkert_inbound_total", result="decrypted",
                          signature="none") == 2
    assert gateway.metric("sendsikkert_inbound_total", result="decrypted",
                          signature="invalid") == 1
    assert gateway.metric("sendsikkert_inbound_total", result="not_decrypted",
                          signature="none") == 1
    assert "inbound result=not_decrypted signature=none reason=\"not-for-a-department:" \
        in gateway.logs()


def check(gateway: Daemon, address: str) -> tuple[int, str]:
    """`send-sikkert check` in a process of its own, as an operator runs it."""
    done = gateway.cli("check", address)
    return done.returncode, done.stdout


def test_a_signed_mail_teaches_the_gateway_a_partners_certificate(config, daemons, ca,
                                                                  tmp_path):
    inbound(config)
    gateway = start(config, daemons)
    new = Partner(tmp_path / "new", ca.issue("ny@partner.dk"), ca)
    assert check(gateway, "ny@partner.dk")[0] == EXIT_REFUSED  # in no directory: unsafe
    # Flawed signatures teach nothing: an untrusted CA, an expired certificate, a
    # certificate for another address than From, and a signing-only certificate.
    stranger_ca = CA("Untrusted CA")
    flawed = {
        "untrusted": Partner(tmp_path / "u", stranger_ca.issue("u@partner.dk"), stranger_ca),
        "expired": Partner(tmp_path / "e", ca.issue(
            "e@partner.dk", not_before=NOW - timedelta(days=400),
            not_after=NOW - timedelta(days=1)), ca),
        "other": Partner(tmp_path / "o", ca.issue("o@partner.dk"), ca),
        "signing only": Partner(tmp_path / "s", ca.issue("s@partner.dk",
                                                         key_encipherment=False), ca),
    }
    for name, who in flawed.items():
        sender = "nogen@partner.dk" if name == "other" else who.address
        mail = who.mail(who.sign(text_entity("Hej\n")), to=DEPARTMENT, subject=name,
                        sender=sender)
        gateway.send(sender, [DEPARTMENT], mail, source=STRANGER)
    clear = new.mail(new.sign(text_entity("Hej fra en ny partner\n")), to=DEPARTMENT,
                     subject="clear-signed")
    gateway.send(new.address, [DEPARTMENT], clear, source=STRANGER)
    messages = delivered(gateway, 5)
    assert "X-Send-Sikkert-Received" not in messages["clear-signed"]  # plain mail: no label
    gateway.wait_queue_empty()

    code, out = check(gateway, "ny@partner.dk")
    assert code == EXIT_OK and "\tsmime\t" in out and "(learnt)" in out
    status, answer = gateway.http("/api/check?address=ny@partner.dk")
    assert answer["results"][0]["class"] == "smime"
    for name, who in flawed.items():
        assert check(gateway, who.address)[0] == EXIT_REFUSED, name
    [folder] = list((config.root / "learnt").iterdir())
    assert folder.name == "ny@partner.dk"
    [stored] = list(folder.glob("*.pem"))
    text = stored.read_text()
    assert "a signed message from ny@partner.dk" in text
    assert x509.load_pem_x509_certificates(text.encode())[0] == new.identity.cert
    assert gateway.metric("sendsikkert_certificates_learnt_total", source="signature") == 1
    assert gateway.metric("sendsikkert_inbound_total", result="plain", signature="valid") == 2
    assert gateway.metric("sendsikkert_inbound_total", result="plain", signature="invalid") == 3


def test_certs_import_validates_each_certificate_like_the_directory(config, daemons, ca,
                                                                   tmp_path):
    inbound(config)
    gateway = Daemon(config)  # the store is shared through files: no daemon needs to run
    config.write()
    inter = CA("Issuing CA", parent=ca)
    pem_one = ca.issue("pem@partner.dk")
    der_one = ca.issue("der@partner.dk")
    in_bundle = inter.issue("bundle@partner.dk")
    expired = ca.issue("gammel@partner.dk", not_before=NOW - timedelta(days=400),
                       not_after=NOW - timedelta(days=2))
    files = {
        "one.pem": pem_one.pem,
        "one.cer": der_one.der,
        "bundle.p7b": pkcs7.serialize_certificates([in_bundle.cert, inter.cert],
                                                   Encoding.DER),
        "bundle.p7c": pkcs7.serialize_certificates([ca.issue("pem7@partner.dk").cert],
                                                   Encoding.PEM),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    done = gateway.cli("certs", "import", *(str(tmp_path / n) for n in files))
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.count(": added ") == 4 and done.stderr == ""
    for address in ("pem@partner.dk", "der@partner.dk", "bundle@partner.dk",
                    "pem7@partner.dk"):
        assert check(gateway, address)[0] == EXIT_OK, address

    (tmp_path / "expired.pem").write_bytes(expired.pem)
    (tmp_path / "untrusted.pem").write_bytes(CA("Other CA").issue("x@partner.dk").pem)
    (tmp_path / "ca-only.pem").write_bytes(inter.pem)
    (tmp_path / "junk.pem").write_bytes(b"not a certificate")
    bad = ["expired.pem", "untrusted.pem", "ca-only.pem", "junk.pem", "missing.pem"]
    done = gateway.cli("certs", "import", str(tmp_path / "one.pem"),
                       *(str(tmp_path / n) for n in bad))
    assert done.returncode == EXIT_REFUSED
    lines = done.stderr.splitlines()
    assert len(lines) == len(bad), lines
    day = (NOW - timedelta(days=2)).strftime("%Y-%m-%d")
    assert f"expired.pem: refused CN=gammel@partner.dk: gammel@partner.dk: expired {day}" \
        in lines[0]
    assert "untrusted.pem: refused" in lines[1] and "not trusted" in lines[1]
    assert "ca-only.pem: refused" in lines[2]
    assert "junk.pem: refused: not a certificate" in lines[3]
    assert "missing.pem: refused: cannot read" in lines[4]
    assert "already known" in done.stdout
    assert check(gateway, "gammel@partner.dk")[0] == EXIT_REFUSED
    gateway = start(config, daemons)
    assert gateway.http("/api/check?address=der@partner.dk")[1]["results"][0]["class"] \
        == "smime"


def test_certs_import_with_a_daemon_running_is_counted_by_it(config, daemons, ca, tmp_path):
    # CONTRACT: sendsikkert_certificates_learnt_total{source="import"}. A command's own
    # counter dies with it: the daemon, which Prometheus scrapes, must do the learning.
    inbound(config)
    gateway = start(config, daemons)
    ca.issue("kim@partner.dk").write(tmp_path / "kim.pem", with_chain=False)
    (tmp_path / "junk.pem").write_bytes(b"not a certificate")
    done = gateway.cli("certs", "import", str(tmp_path / "kim.pem"), str(tmp_path / "junk.pem"))
    assert done.returncode == EXIT_REFUSED
    assert done.stdout == f"{tmp_path / 'kim.pem'}: added CN=kim@partner.dk for kim@partner.dk\n"
    assert done.stderr == f"send-sikkert: {tmp_path / 'junk.pem'}: refused: not a certificate " \
                          "(PEM, DER or PKCS#7)\n"
    assert gateway.metric("sendsikkert_certificates_learnt_total", source="import") == 1
    code, line = check(gateway, "kim@partner.dk")
    assert code == EXIT_OK and "\tsmime\t" in line and "(learnt)" in line
    again = gateway.cli("certs", "import", str(tmp_path / "kim.pem"))
    assert again.returncode == EXIT_OK and "already known" in again.stdout
    assert gateway.metric("sendsikkert_certificates_learnt_total", source="import") == 1


DEPARTMENT_REPLIES = """[[departments]]
id = "aeldreomsorg"
name = "Ældre og Omsorg"
mailbox = "aeldreomsorg@brondby.dk"
cert = "{cert}"
key = "{key}"
stamp = "Sendt sikkert via Ældre og Omsorg"
senders = ["*@brondby.dk"]
replies = "department"
"""


def test_a_two_way_encrypted_conversation_with_a_partner_in_no_directory(config, daemons,
                                                                         partner, ca, tmp_path):
    inbound(config)
    config.departments = DEPARTMENT_REPLIES.format(cert=config.certs / "aeldreomsorg.pem",
                                                   key=config.certs / "aeldreomsorg.key")
    gateway = start(config, daemons)
    assert check(gateway, partner.address)[0] == EXIT_REFUSED

    # 1. The partner writes to Lene, signed: the gateway learns the partner's certificate.
    question = partner.mail(partner.sign(text_entity("Hvordan har min mor det?\n")),
                            to="lela@brondby.dk", subject="Min mor")
    gateway.send(partner.address, ["lela@brondby.dk"], question, source=STRANGER)
    gateway.wait_outbox(1)
    gateway.wait_queue_empty()
    assert check(gateway, partner.address)[0] == EXIT_OK

    # 2. Lene answers with "Send Sikkert": it goes out signed and encrypted to the partner.
    answer = (b"From: Lene Larsen <lela@brondby.dk>\r\nTo: ole@partner.dk\r\n"
              b"Subject: Sv: Min mor\r\nMessage-ID: <svar-1@brondby.dk>\r\n"
              b"X-Send-Sikkert: aeldreomsorg\r\n\r\nHun har skinnebenssaar.\r\n")
    gateway.send("lela@brondby.dk", [partner.address], answer)
    messages = delivered(gateway, 2)
    sent = messages["Sv: Min mor"]
    assert sent["X-Envelope-To"] == partner.address
    assert sent.get_content_type() == "application/pkcs7-mime"
    assert sent["Reply-To"].addresses[0].addr_spec == DEPARTMENT

    # 3. The partner's client reads it and takes the department's certificate, and how to
    #    answer, from the signature (RFC 8551 2.5): AES-256-CBC first, encrypt to this one.
    signed = partner.openssl("-decrypt", "-recip", partner.cert, "-inkey", partner.key,
                             data=crlf(sent.as_bytes()))
    signer = tmp_path / "department.pem"
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    content = partner.openssl("-verify", "-CAfile", tmp_path / "ca.pem", "-signer", signer,
                              data=signed)
    assert b"Hun har skinnebenssaar." in content
    [learnt_department] = x509.load_pem_x509_certificates(signer.read_bytes())
    assert learnt_department == config.department.cert
    signature = email.message_from_bytes(signed).get_payload()[1].get_payload(decode=True)
    attributes = {a["type"].native: a["values"] for a in
                  cms.ContentInfo.load(signature)["content"]["signer_infos"][0]["signed_attrs"]}
    capabilities = [c["capability_id"].native for c in attributes["smime_capabilities"][0]]
    assert capabilities[0] == "aes256_cbc"
    preference = attributes["encrypt_key_pref"][0].chosen
    assert preference["serial_number"].native == config.department.cert.serial_number

    # 4. The encrypted, signed reply goes to the department mailbox (Reply-To) and is
    #    delivered, decrypted, to Lene, who wrote the mail it answers.
    reply = partner.mail(
        partner.encrypt(partner.sign(text_entity("Tak, det var godt at høre.\n")),
                        [learnt_department], cipher=capabilities[0].replace("_cbc", "")),
        to=str(sent["Reply-To"]), subject="Sv: Sv: Min mor", in_reply_to="<svar-1@brondby.dk>",
        references="<q@partner.dk> <svar-1@brondby.dk>")
    gateway.send(partner.address, [DEPARTMENT], reply, source=STRANGER)
    # A reply to a mail the gateway never sent stays with the department mailbox.
    unrelated = partner.mail(partner.encrypt(text_entity("Noget andet\n"), [learnt_department]),
                             to=DEPARTMENT, subject="Noget andet", in_reply_to="<x@brondby.dk>")
    gateway.send(partner.address, [DEPARTMENT], unrelated, source=STRANGER)
    messages = delivered(gateway, 4)
    routed = messages["Sv: Sv: Min mor"]
    assert routed["X-Envelope-To"] == "lela@brondby.dk"
    assert received(routed) == "decrypted=aeldreomsorg; signature=valid; signer=ole@partner.dk"
    assert openssl_verify(crlf(routed.as_bytes()), ca, tmp_path).returncode == 0
    assert "Tak, det var godt at høre." in routed.as_bytes().decode()
    assert messages["Noget andet"]["X-Envelope-To"] == DEPARTMENT
    gateway.wait_queue_empty()
    assert gateway.metric("sendsikkert_recipients_total",
                          **{"class": "smime", "outcome": "delivered"}) == 1
    assert gateway.metric("sendsikkert_inbound_total", result="decrypted",
                          signature="valid") == 1
    assert f"routed to=<{DEPARTMENT}> targets=lela@brondby.dk" in gateway.logs()
    assert "learnt address=ole@partner.dk" in gateway.logs()
