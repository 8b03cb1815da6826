"""Every class end to end through the real daemon, delivering to its `file:` outbox.

Each delivered file carries the envelope in X-Envelope-From / X-Envelope-To, so these
scenarios see exactly what would have gone to the next hop.
"""

from __future__ import annotations

import email
import email.policy
import subprocess
from pathlib import Path

from tests.e2e.conftest import sample
from tests.support.daemon import Daemon

OK = 250


def envelope_to(path: Path) -> list[str]:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    return sorted(msg.get_all("X-Envelope-To") or [])


def parse(path: Path) -> email.message.EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def dsns(files: list[Path]) -> list[email.message.EmailMessage]:
    return [m for m in map(parse, files) if m.get_content_type() == "multipart/report"]


def test_untagged_mail_is_relayed_unchanged(gateway: Daemon):
    data = sample("01-plain-no-personal-data.eml")
    queue_id = gateway.send("signo@brondby.dk", ["hm@hotmail.dk"], data)
    [out] = gateway.wait_outbox(1)
    assert out.name == f"{queue_id}.1.eml"
    raw = out.read_bytes()
    assert raw.endswith(data)  # every byte, after the envelope headers
    assert envelope_to(out) == ["hm@hotmail.dk"]
    gateway.wait_queue_empty()
    assert gateway.metric("sendsikkert_messages_received_total", tagged="false") == 1
    assert gateway.metric("sendsikkert_recipients_total", **{"class": "plain",
                                                            "outcome": "delivered"}) == 1


def test_internal_recipient_gets_content_without_tags(gateway: Daemon):
    data = sample("03-cpr-and-health-tagged.eml").replace(b"To: olelsen@dhl.dk",
                                                           b"To: gildhoej@brondby.dk")
    gateway.send("lela@brondby.dk", ["gildhoej@brondby.dk"], data)
    [out] = gateway.wait_outbox(1)
    msg = parse(out)
    assert msg["Subject"] == "Vedr. din mor, bolig 127"
    assert "X-Send-Sikkert" not in msg
    assert out.read_bytes().endswith(data.partition(b"\r\n\r\n")[2])  # body unchanged
    gateway.wait_queue_empty()
    assert gateway.metric("sendsikkert_recipients_total", **{"class": "internal",
                                                            "outcome": "delivered"}) == 1
    assert gateway.metric("sendsikkert_delivery_seconds_count", route="internal") == 1


def test_tunnel_recipient_with_encoded_subject_tag(gateway: Daemon):
    data = sample("04-tunnel-complaint-encoded-subject.eml")
    gateway.send("signo@brondby.dk", ["sikkermail@ast.dk"], data)
    [out] = gateway.wait_outbox(1)
    msg = parse(out)
    assert msg["Subject"] == "SV: Vedr. klage over afgørelse"
    assert b"%%" not in out.read_bytes() and b"=25=25" not in out.read_bytes()
    assert msg.get_content_type() == "text/plain"  # tunnel mail stays readable
    gateway.wait_queue_empty()
    assert gateway.metric("sendsikkert_messages_received_total", tagged="true") == 1


def test_unsafe_recipient_bounces_with_contract_dsn(gateway: Daemon):
    data = sample("03-cpr-and-health-tagged.eml").replace(
        b"Subject: aeldreomsorg%% Vedr. din mor, bolig 127",
        b"Subject: aeldreomsorg%% Vedr. din mor")
    queue_id = gateway.send("lela@brondby.dk", ["olelsen@dhl.dk"], data,
                            mail_options=("ENVID=QQ314159",))
    [out] = gateway.wait_outbox(1)
    [dsn] = dsns([out])
    assert envelope_to(out) == ["lela@brondby.dk"]
    assert parse(out)["X-Envelope-From"] == "<>"
    assert dsn["From"] == "Mail Delivery System <MAILER-DAEMON@sikkermail.brondby.example>"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn.get_param("report-type") == "delivery-status"
    text, status, headers = dsn.get_payload()
    assert text.get_content_type() == "text/plain"
    assert text.get_content_charset() == "utf-8"
    body = text.get_content()
    assert "olelsen@dhl.dk" in body
    assert body.index("Digital Post") < body.index("secure")  # Danish first, then English
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = status.get_payload()[0], status.get_payload()[1]
    assert per_message["Reporting-MTA"] == "dns; sikkermail.brondby.example"
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_recipient["Final-Recipient"] == "rfc822; olelsen@dhl.dk"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.7.1"
    assert per_recipient["Diagnostic-Code"]
    assert headers.get_content_type() == "text/rfc822-headers"
    raw = out.read_bytes()
    assert b"Message-ID: <sample-03@brondby.dk>" in raw
    assert b"skinnebenss" not in raw and b"220910-1234" not in raw  # never the body
    gateway.wait_queue_empty()
    assert gateway.metric("sendsikkert_dsn_sent_total", action="failed") == 1
    assert gateway.metric("sendsikkert_recipients_total", **{"class": "unsafe",
                                                            "outcome": "bounced"}) == 1
    assert queue_id


def test_cpr_in_subject_bounces_whole_message(gateway: Daemon):
    data = (b"From: Lene Larsen <lela@brondby.dk>\r\nTo: sikkermail@ast.dk\r\n"
            b"Subject: aeldreomsorg%% Bente 220910-1234\r\nMessage-ID: <cpr@brondby.dk>\r\n\r\n"
            b"Hemmelig tekst\r\n")
    gateway.send("lela@brondby.dk", ["sikkermail@ast.dk"], data)
    [out] = gateway.wait_outbox(1)
    [dsn] = dsns([out])
    assert "CPR" in dsn.get_payload()[0].get_content()
    assert b"Hemmelig" not in out.read_bytes()


def test_unknown_keyword_and_foreign_sender_bounce(gateway: Daemon):
    typo = (b"From: lela@brondby.dk\r\nTo: olelsen@dhl.dk\r\nSubject: aeldreomsorgg%% hej\r\n"
            b"\r\nfortroligt\r\n")
    gateway.send("lela@brondby.dk", ["olelsen@dhl.dk"], typo)
    foreign = b"From: x@other.dk\r\nTo: a@ast.dk\r\nX-Send-Sikkert: aeldreomsorg\r\n\r\nhej\r\n"
    gateway.send("x@other.dk", ["a@ast.dk"], foreign)
    files = gateway.wait_outbox(2)
    reports = dsns(files)
    assert len(reports) == 2
    assert {m["X-Envelope-To"] for m in reports} == {"lela@brondby.dk", "x@other.dk"}
    assert all(b"fortroligt" not in f.read_bytes() for f in files)
    for m in reports:
        assert m.get_payload()[1].get_payload()[1]["Status"] == "5.7.1"


def test_mixed_recipients_each_get_their_class(gateway: Daemon):
    data = (b"From: Lene Larsen <lela@brondby.dk>\r\nTo: gildhoej@brondby.dk, sikkermail@ast.dk,"
            b" hm@hotmail.dk\r\nSubject: aeldreomsorg%% Om din mor\r\n\r\nTekst\r\n")
    gateway.send("lela@brondby.dk", ["gildhoej@brondby.dk", "sikkermail@ast.dk",
                                     "hm@hotmail.dk"], data)
    files = gateway.wait_outbox(3)
    reports = dsns(files)
    delivered = [f for f in files if parse(f).get_content_type() != "multipart/report"]
    assert sorted(sum((envelope_to(f) for f in delivered), [])) == [
        "gildhoej@brondby.dk", "sikkermail@ast.dk"]
    [dsn] = reports
    assert dsn.get_payload()[1].get_payload()[1]["Final-Recipient"] == "rfc822; hm@hotmail.dk"
    assert "gildhoej" not in dsn.get_payload()[0].get_content()


def test_check_command_and_api_agree(gateway: Daemon):
    addresses = ["gildhoej@brondby.dk", "sikkermail@ast.dk", "hm@hotmail.dk"]
    result = gateway.cli("check", "--json", *addresses)
    assert result.returncode == 1  # one unsafe
    status, api = gateway.http("/api/check?" + "&".join(f"address={a}" for a in addresses))
    assert status == 200
    import json
    assert json.loads(result.stdout) == api
    got = [(r["address"], r["class"], r["colour"], r["safe"]) for r in api["results"]]
    assert got == [("gildhoej@brondby.dk", "internal", "turkis", True),
                   ("sikkermail@ast.dk", "tunnel", "grøn", True),
                   ("hm@hotmail.dk", "unsafe", "rød", False)]
    assert api["results"][2]["label"] == "Sikker mail er ikke mulig"
    safe = gateway.cli("check", "gildhoej@brondby.dk", "sikkermail@ast.dk")
    assert safe.returncode == 0 and "tunnel" in safe.stdout
    assert gateway.cli("check", "not-an-address").returncode == 2
    assert gateway.http("/api/check?address=*)(mail=*")[0] == 400


def test_health_ready_metrics(gateway: Daemon):
    assert gateway.http("/healthz")[0] == 200
    assert gateway.http("/readyz") == (200, {"status": "ready"})
    text = gateway.metrics()
    assert "sendsikkert_sepo_domains 1.0" in text
    assert 'sendsikkert_department_cert_expiry_timestamp_seconds{department="aeldreomsorg"}' \
        in text
    for name in ("sendsikkert_queue_messages", "sendsikkert_queue_oldest_age_seconds"):
        assert name in text


def test_sigterm_exits_zero(gateway: Daemon):
    assert gateway.stop() == 0
    assert "stopped" in gateway.logs()


def test_cli_without_config_file_is_a_config_error(tmp_path: Path):
    from tests.support.daemon import SCRIPT
    result = subprocess.run([SCRIPT, "--config", str(tmp_path / "none.toml"), "config", "check"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "none.toml" in result.stderr
