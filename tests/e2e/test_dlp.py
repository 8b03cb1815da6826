"""DLP end to end: untagged mail holding a CPR number through the real daemon, per mode.

One mail goes to an unsafe (hm@hotmail.dk), a tunnel (sikkermail@ast.dk, on the SEPO
list), an S/MIME (olelsen@dhl.dk, certificate in the directory) and an internal
(gildhoej@brondby.dk) recipient at once; the `file:` outbox shows what each got.
"""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import time
from pathlib import Path

import pytest

from gateway.policy.dlp.cpr import contains_cpr
from gateway.spool.store import STREAM_AT
from tests.support import documents
from tests.support.daemon import SCRIPT, Daemon, GatewayConfig
from tests.support.daemon import start as start_daemon
from tests.support.identifiers import without_identifiers
from tests.support.pki import CA

EXIT_NOTHING, EXIT_FOUND, EXIT_UNREADABLE = 0, 1, 2
UNSAFE, TUNNEL, SMIME, INTERNAL = ("hm@hotmail.dk", "sikkermail@ast.dk", "olelsen@dhl.dk",
                                   "gildhoej@brondby.dk")
EVERYONE = [UNSAFE, TUNNEL, SMIME, INTERNAL]
CPR = "220910-1230"


def parse(path: Path) -> email.message.EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def by_recipient(files: list[Path]) -> dict[str, email.message.EmailMessage]:
    """Each delivered copy by its envelope recipient; DSNs under "dsn:<sender>"."""
    out = {}
    for f in files:
        m = parse(f)
        for rcpt in m.get_all("X-Envelope-To") or []:
            key = f"dsn:{rcpt}" if m.get_content_type() == "multipart/report" else rcpt
            out[key] = m
    return out


def care_mail(to: list[str], subject: str = "Vedr. din mor") -> bytes:
    """The mail of DOMAIN.md, unmarked, with the number in an attached letter."""
    letter = documents.pdf("Kære Ole", f"Din mor, Bente Jensen, CPR {CPR}, har skinnebenssår.")
    return documents.mail("Se vedhæftede brev.", subject=subject, to=", ".join(to),
                          attachments=[("brev til Ole.pdf", documents.PDF_TYPE, letter)])


@pytest.fixture
def smime_recipient(config: GatewayConfig, ca: CA) -> None:
    (config.certs / "directory" / "olelsen.pem").write_bytes(ca.issue(SMIME).pem)


def start(config: GatewayConfig, daemons: list[Daemon], mode: str) -> Daemon:
    config.extra = f'[dlp]\ncpr = "{mode}"\n'
    return start_daemon(config, daemons)


def dsn_text(dsn: email.message.EmailMessage) -> str:
    """The human part with its lines joined: phrases may wrap anywhere."""
    return " ".join(dsn.get_payload()[0].get_content().split())


def failed_recipients(dsn: email.message.EmailMessage) -> list[str]:
    blocks = dsn.get_payload()[1].get_payload()[1:]
    assert all(b["Status"] == "5.7.1" and b["Action"] == "failed" for b in blocks)
    return sorted(b["Final-Recipient"].removeprefix("rfc822; ") for b in blocks)


def test_secure_sends_safely_or_bounces(config, daemons, smime_recipient):
    gateway = start(config, daemons, "secure")
    data = care_mail(EVERYONE)
    gateway.send("lela@brondby.dk", EVERYONE, data)
    got = by_recipient(gateway.wait_outbox(4))
    gateway.wait_queue_empty()
    assert set(got) == {INTERNAL, TUNNEL, SMIME, "dsn:lela@brondby.dk"}
    for internal in (f for f in gateway.outbox() if INTERNAL in parse(f)["X-Envelope-To"]):
        assert internal.read_bytes().endswith(data)  # delivered as usual: every byte
    assert got[TUNNEL].get_content_type() == "multipart/mixed"  # tunnel mail stays readable
    assert got[SMIME].get_content_type() == "application/pkcs7-mime"
    assert got[SMIME]["From"] == "Lene Larsen via Ældre og Omsorg <aeldreomsorg@brondby.dk>"
    dsn = got["dsn:lela@brondby.dk"]
    assert failed_recipients(dsn) == [UNSAFE]
    text = dsn_text(dsn)
    assert "CPR-nummer i den vedhæftede fil »brev til Ole.pdf«" in text
    assert "the attachment “brev til Ole.pdf” holds a CPR number" in text
    for advice in ("Send med Digital Post", "Fjern CPR-nummeret", "Send Sikkert",
                   "Digital Post instead", "Remove the CPR number", "use Send Sikkert"):
        assert advice in text
    raw = next(f for f in gateway.outbox() if parse(f).get_content_type() == "multipart/report")
    assert not contains_cpr(raw.read_text())
    assert b"1230" not in without_identifiers(raw.read_bytes())
    assert gateway.metric("sendsikkert_dlp_findings_total", where="attachment",
                          action="secure") == 1
    assert gateway.metric("sendsikkert_recipients_total", **{"class": "smime",
                                                            "outcome": "delivered"}) == 1
    assert gateway.metric("sendsikkert_recipients_total", **{"class": "plain",
                                                            "outcome": "delivered"}) == 2
    # ...the internal recipient and the DSN to the sender
    assert gateway.metric("sendsikkert_dlp_scan_seconds_count") == 2  # the mail and its DSN


def test_block_bounces_every_external_recipient(config, daemons, smime_recipient):
    gateway = start(config, daemons, "block")
    gateway.send("lela@brondby.dk", EVERYONE, care_mail(EVERYONE))
    got = by_recipient(gateway.wait_outbox(2))
    gateway.wait_queue_empty()
    assert set(got) == {INTERNAL, "dsn:lela@brondby.dk"}
    dsn = got["dsn:lela@brondby.dk"]
    assert failed_recipients(dsn) == sorted([UNSAFE, TUNNEL, SMIME])
    text = dsn_text(dsn)
    assert "må ikke sendes som almindelig mail" in text and "Brug Send Sikkert" in text
    assert "must not go as ordinary mail" in text
    assert gateway.metric("sendsikkert_dlp_findings_total", where="attachment",
                          action="block") == 1


@pytest.mark.parametrize("mode", ["warn", "off"])
def test_warn_and_off_deliver_as_usual(config, daemons, smime_recipient, mode):
    gateway = start(config, daemons, mode)
    data = care_mail(EVERYONE)
    gateway.send("lela@brondby.dk", EVERYONE, data)
    files = gateway.wait_outbox(1)
    gateway.wait_queue_empty()
    [out] = files  # one file route: one copy for all four
    assert sorted(parse(out).get_all("X-Envelope-To")) == sorted(EVERYONE)
    assert out.read_bytes().endswith(data)
    findings = gateway.metric("sendsikkert_dlp_findings_total", where="attachment",
                              action="warn")
    assert findings == (1 if mode == "warn" else 0)
    if mode == "warn":
        assert 'dlp mode=warn findings=1 found="the attachment brev til Ole.pdf"' in (
            gateway.logs())
        assert CPR not in gateway.logs()


def test_secure_without_a_department_bounces_external_recipients(config, daemons):
    gateway = start(config, daemons, "secure")
    data = care_mail([TUNNEL, INTERNAL])
    gateway.send("vikar@vikarbureau.dk", [TUNNEL, INTERNAL], data)
    got = by_recipient(gateway.wait_outbox(2))
    assert set(got) == {INTERNAL, "dsn:vikar@vikarbureau.dk"}
    text = dsn_text(got["dsn:vikar@vikarbureau.dk"])
    assert "ingen afdeling, du kan sende sikker mail fra" in text


def test_cpr_in_the_subject_of_untagged_mail(config, daemons):
    gateway = start(config, daemons, "secure")
    data = documents.mail("Hej Ole", subject=f"Bente Jensen {CPR}", to=TUNNEL)
    gateway.send("lela@brondby.dk", [TUNNEL], data)
    [out] = gateway.wait_outbox(1)
    dsn = parse(out)
    assert dsn.get_content_type() == "multipart/report"
    assert "Emnefeltet indeholder noget, der ligner et CPR-nummer" in dsn_text(dsn)
    headers = dsn.get_payload()[2].get_content()
    assert "Subject: Bente Jensen 220910-XXXX" in headers  # the copy of the headers, masked
    assert b"1230" not in without_identifiers(out.read_bytes())


def test_unknown_waits_and_the_decision_is_kept_for_retries(config, daemons):
    config.directory = f"""[directory]
backend = "ldap"
url = "ldap://127.0.0.1:{config.smtp_port + 1}"
timeout = 1
trust_anchors = ["{config.certs / 'trust'}/*.pem"]
"""
    gateway = start(config, daemons, "secure")
    queue_id = gateway.send("lela@brondby.dk", [SMIME], care_mail([SMIME]))
    [message] = [p for p in gateway.spooled() if p.name == f"{queue_id}.msg"]
    record = message.with_suffix(".json")  # written once an attempt changed the state

    def state() -> dict:
        return json.loads(record.read_text()) if record.exists() else {
            "recipients": [{"attempts": 0}]}

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and state()["recipients"][0]["attempts"] < 2:
        time.sleep(0.1)
    saved = state()
    assert saved["recipients"][0]["state"] == "deferred" and saved["recipients"][0][
        "cls"] == "unknown"
    assert saved["recipients"][0]["attempts"] >= 2  # retried...
    assert saved["dlp"] == {"mode": "secure", "found": [["attachment", "brev til Ole.pdf"]],
                            "gaps": []}
    assert gateway.outbox() == []  # never sent in the clear, never bounced as unsafe
    assert gateway.metric("sendsikkert_dlp_findings_total", where="attachment",
                          action="secure") == 1  # ...but scanned and counted once
    shown = gateway.cli("queue", "show", queue_id).stdout
    assert "dlp.cpr = secure; CPR number found in: attachment brev til Ole.pdf" in shown


def test_gaps_are_logged_and_counted(config, daemons):
    gateway = start(config, daemons, "secure")
    locked = documents.zip_of({"liste.csv": CPR.encode()}, password="hemmelig")
    data = documents.mail("Bilag", to=INTERNAL, attachments=[("liste.zip", "application/zip",
                                                             locked)])
    gateway.send("lela@brondby.dk", [INTERNAL], data)
    gateway.wait_outbox(1)
    assert gateway.metric("sendsikkert_dlp_incomplete_total", reason="encrypted") == 1
    assert 'incomplete="encrypted: liste.zip (a password-protected ZIP archive)"' in (
        gateway.logs())


def test_scan_command_exit_codes(config, daemons, tmp_path):
    config.write()
    clean = tmp_path / "ren.eml"
    clean.write_bytes(documents.mail("Kørsel til frisøren den 25. januar kl. 10.30"))
    found = tmp_path / "cpr.eml"
    found.write_bytes(care_mail([UNSAFE]).replace(b"\r\n", b"\n"))  # as saved on disk

    def scan(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SCRIPT, "--config", str(config.path), "scan", *args],
                              capture_output=True, text=True, timeout=60)

    assert scan(str(clean)).returncode == EXIT_NOTHING
    result = scan(str(clean), str(found))
    assert result.returncode == EXIT_FOUND
    assert "220910-XXXX  attachment brev til Ole.pdf  (hyphen)" in result.stdout
    assert CPR not in result.stdout
    as_json = scan("--json", str(found))
    assert json.loads(as_json.stdout)["files"][0]["findings"] == [
        {"where": "attachment", "name": "brev til Ole.pdf", "number": "220910-XXXX",
         "reason": "hyphen"}]
    missing = scan(str(found), str(tmp_path / "findes-ikke.eml"))
    assert missing.returncode == EXIT_UNREADABLE and "findes-ikke.eml" in missing.stderr
    assert scan().returncode == EXIT_UNREADABLE  # usage: no file


def test_mail_from_outside_is_never_scanned(config, daemons):
    config.relay_networks = ["127.0.0.1/32"]
    config.extra = (f'[dlp]\ncpr = "secure"\n\n[inbound]\nenabled = true\n'
                    f'harvest = "{config.root / "learnt"}"\n')
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    from_partner = care_mail([INTERNAL], subject="Fra partneren")
    gateway.send("ole@partner.dk", [INTERNAL], from_partner, source="127.0.0.9")
    gateway.wait_outbox(1)
    gateway.wait_queue_empty()
    assert gateway.metric("sendsikkert_dlp_scan_seconds_count") == 0  # not even looked at
    gateway.send("lela@brondby.dk", [INTERNAL], care_mail([INTERNAL]))  # from inside
    gateway.wait_outbox(2)
    gateway.wait_queue_empty()
    assert gateway.metric("sendsikkert_dlp_scan_seconds_count") == 1
    assert gateway.metric("sendsikkert_dlp_findings_total", where="attachment",
                          action="secure") == 1  # counted; internal mail goes as usual


def test_a_large_mail_is_scanned_in_a_worker_process(config, daemons):
    gateway = start(config, daemons, "block")
    photo = bytes(range(256)) * 1200  # 300 KiB: past the size scanned in a thread
    letter = documents.docx_runs("Bente ", "2209", "10-12", "30")
    data = documents.mail("Se bilag", to=UNSAFE, attachments=[
        ("foto.png", "image/png", photo), ("notat.docx", documents.DOCX_TYPE, letter)])
    assert len(data) > 256 * 1024
    gateway.send("lela@brondby.dk", [UNSAFE], data)
    [out] = gateway.wait_outbox(1, timeout=60)
    assert "den vedhæftede fil »notat.docx«" in dsn_text(parse(out))


def test_a_mail_left_in_its_spool_file_is_scanned_there(config, daemons):
    config.max_message_size = 8 << 20
    gateway = start(config, daemons, "block")
    photo = bytes(range(256)) * 5000  # 1.2 MiB, base64 past STREAM_AT: only read from its file
    letter = documents.docx_runs("Bente ", "2209", "10-12", "30")
    data = documents.mail("Se bilag", to=UNSAFE, attachments=[
        ("foto.png", "image/png", photo), ("notat.docx", documents.DOCX_TYPE, letter)])
    assert len(data) > STREAM_AT
    gateway.send("lela@brondby.dk", [UNSAFE], data)
    [out] = gateway.wait_outbox(1, timeout=60)
    assert "den vedhæftede fil »notat.docx«" in dsn_text(parse(out))
