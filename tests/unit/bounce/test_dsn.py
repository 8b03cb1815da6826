"""The DSN builder: the CONTRACT shape field by field, the golden file, never the body."""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
from pathlib import Path
from typing import get_args

import pytest

from gateway.bounce.dsn import Kind, Notice, build_dsn, is_global
from tests.support.golden import assert_matches_golden
from tests.support.identifiers import without_identifiers

GOLDEN = Path(__file__).parent / "golden"
SUCCESS = ("delivered", "relayed")
HOSTNAME = "sikkermail.example.dk"
ORGANISATION = "Brøndby Kommune"
SENDER = "anna.jensen@brondby.dk"
ARRIVAL = 1700000000.0  # 2023-11-14 22:13:20 UTC
SECRET = "Borgeren har bensår og er blind"
ORIGINAL = (
    "From: Anna Jensen <anna.jensen@brondby.dk>\r\n"
    "To: Lone Hansen <lone@gmail.example>, peter@hotmail.example\r\n"
    "Subject: Om borgeren\r\n"
    "Message-ID: <original-1@brondby.dk>\r\n"
    "X-Send-Sikkert: aeldreomsorg\r\n"
    "\r\n"
    f"{SECRET}.\r\n"
).encode()


def unsafe(address: str, orcpt: str = "") -> Notice:
    return Notice(address=address, orcpt=orcpt, action="failed", status="5.7.1",
                  diagnostic="x-send-sikkert; no secure route: not internal, not on the SEPO "
                             "list, no valid certificate", kind="unsafe")


def delivered(address: str, orcpt: str = "", diagnostic: str = "") -> Notice:
    return Notice(address=address, orcpt=orcpt, action="delivered", status="2.0.0",
                  diagnostic=diagnostic, kind="delivered")


def relayed(address: str, orcpt: str = "",
            diagnostic: str = "smtp; 250 2.0.0 OK: queued as 4B2") -> Notice:
    return Notice(address=address, orcpt=orcpt, action="relayed", status="2.0.0",
                  diagnostic=diagnostic, kind="relayed")


def build(notices: list[Notice], envid: str = "", original: bytes = ORIGINAL) -> bytes:
    return build_dsn(hostname=HOSTNAME, organisation=ORGANISATION, queue_id="Q20231114-1",
                     arrival=ARRIVAL, sender=SENDER, original_headers=original,
                     notices=notices, envid=envid)


def parse(dsn: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(dsn, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def text_of(msg: email.message.EmailMessage) -> str:
    part = msg.get_payload()[0]
    return part.get_content()


def test_matches_the_golden_file() -> None:
    dsn = build([unsafe("lone@gmail.example", "rfc822;lone@gmail.example"),
                 unsafe("peter@hotmail.example")], envid="ENV-1")
    golden = (GOLDEN / "unsafe.dsn").read_text(encoding="utf-8")
    assert_matches_golden(dsn.decode("utf-8"), golden)


def test_top_level_headers() -> None:
    msg = parse(build([unsafe("lone@gmail.example")]))
    assert msg["From"] == f"Mail Delivery System <MAILER-DAEMON@{HOSTNAME}>"
    assert msg["To"].addresses[0].addr_spec == SENDER
    assert msg["Subject"] == ("Ikke afleveret: sikker mail er ikke mulig / "
                              "Undeliverable: secure mail not possible")
    assert email.utils.parsedate_to_datetime(msg["Date"]) is not None
    assert msg["Message-ID"].endswith(f"@{HOSTNAME}>")
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in msg.get_payload()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert msg.get_payload()[0].get_content_charset() == "utf-8"


def test_human_part_is_danish_first_names_recipients_and_alternatives() -> None:
    text = text_of(parse(build([unsafe("lone@gmail.example"),
                                unsafe("peter@hotmail.example")])))
    english = text.index("This is an automatic message")
    assert 0 < text.index("Hvorfor:") < english < text.index("Why:")
    for address in ("lone@gmail.example", "peter@hotmail.example"):
        assert address in text[:english] and address in text[english:]
    for advice in ("sikker mailadresse", "Digital Post", "Ring til modtageren",
                   "Fjern de følsomme personoplysninger", "Brøndby Kommunes vejledning"):
        assert advice in text[:english]
    for advice in ("secure e-mail address", "Digital Post", "Telephone the recipient",
                   "Remove the sensitive personal data", "guide to secure mail"):
        assert advice in text[english:]


def test_delivery_status_fields() -> None:
    msg = parse(build([unsafe("lone@gmail.example", "rfc822;lone+2Bsag@gmail.example"),
                       unsafe("peter@hotmail.example")], envid="ENV+2B1"))
    per_message, first, second = msg.get_payload()[1].get_payload()
    assert per_message["Reporting-MTA"] == f"dns; {HOSTNAME}"
    assert per_message["Original-Envelope-Id"] == "ENV+1"  # xtext decoded (RFC 3464 2.2.1)
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == ARRIVAL
    assert first["Original-Recipient"] == "rfc822; lone+sag@gmail.example"
    assert first["Final-Recipient"] == "rfc822; lone@gmail.example"
    assert first["Action"] == "failed"
    assert first["Status"] == "5.7.1"
    assert first["Diagnostic-Code"].startswith("x-send-sikkert; no secure route")
    assert second["Original-Recipient"] is None
    assert second["Final-Recipient"] == "rfc822; peter@hotmail.example"


def test_original_envelope_id_only_when_given() -> None:
    per_message = parse(build([unsafe("lone@gmail.example")])).get_payload()[1].get_payload()[0]
    assert per_message["Original-Envelope-Id"] is None


def test_original_headers_are_returned_and_the_body_never() -> None:
    dsn = build([unsafe("lone@gmail.example")])
    msg = parse(dsn)
    headers = msg.get_payload()[2].get_payload()
    assert headers.replace("\r\n", "\n").strip() == ORIGINAL.decode().split("\r\n\r\n")[0] \
        .replace("\r\n", "\n")
    assert SECRET.encode() not in dsn
    assert all(SECRET not in str(part.get_payload()) for part in msg.walk())


def test_original_subject_is_not_in_the_dsn_subject() -> None:
    original = ORIGINAL.replace(b"Om borgeren", b"Borger 010203-1234")
    msg = parse(build([Notice("lone@gmail.example", "", "failed", "5.7.1",
                              "x-send-sikkert; CPR number in the subject", "cpr_in_subject")],
                      original=original))
    assert "010203" not in msg["Subject"]
    text = text_of(msg)
    assert "Fjern CPR-nummeret fra emnefeltet" in text
    assert "Remove the CPR number from the subject" in text


def test_delayed_report() -> None:
    msg = parse(build([Notice("lone@gmail.example", "", "delayed", "4.4.1",
                              "x-send-sikkert; 451 4.4.1 cannot connect", "delayed")]))
    assert msg["Subject"].startswith("Forsinket")
    assert "Delayed" in msg["Subject"]
    block = msg.get_payload()[1].get_payload()[1]
    assert (block["Action"], block["Status"]) == ("delayed", "4.4.1")
    text = text_of(msg)
    assert "Du behøver ikke gøre noget" in text and "Nothing is needed from you" in text
    assert "451 4.4.1 cannot connect" in text


def test_rejected_names_the_server_reply() -> None:
    msg = parse(build([Notice("lone@gmail.example", "", "failed", "5.1.1",
                              "smtp; 550 5.1.1 no such user", "rejected")]))
    text = text_of(msg)
    assert "årsag: 550 5.1.1 no such user" in text
    assert "reason: 550 5.1.1 no such user" in text
    assert msg.get_payload()[1].get_payload()[1]["Diagnostic-Code"] == \
        "smtp; 550 5.1.1 no such user"


@pytest.mark.parametrize("kind", [k for k in get_args(Kind) if k not in SUCCESS])
def test_every_failure_kind_is_explained_in_both_languages(kind: str) -> None:
    action = "delayed" if kind == "delayed" else "failed"
    msg = parse(build([Notice("lone@gmail.example", "", action,  # type: ignore[arg-type]
                              "4.0.0" if action == "delayed" else "5.0.0",
                              "x-send-sikkert; reason", kind)]))  # type: ignore[arg-type]
    text = text_of(msg)
    assert "Hvorfor:" in text and "Det kan du gøre:" in text
    assert "Why:" in text and "What you can do:" in text
    assert " / " in msg["Subject"]


def test_mixed_failed_and_delayed_in_one_report() -> None:
    msg = parse(build([unsafe("lone@gmail.example"),
                       Notice("peter@hotmail.example", "", "delayed", "4.4.1",
                              "x-send-sikkert; timeout", "delayed")]))
    blocks = msg.get_payload()[1].get_payload()[1:]
    assert [b["Action"] for b in blocks] == ["failed", "delayed"]
    assert msg["Subject"].startswith("Ikke afleveret")


# Success notices (RFC 3461 6.2, NOTIFY=SUCCESS)

def test_relayed_matches_the_golden_file() -> None:
    dsn = build([relayed("lone@gmail.example", "rfc822;lone@gmail.example")], envid="ENV-1")
    golden = (GOLDEN / "relayed.dsn").read_text(encoding="utf-8")
    assert_matches_golden(dsn.decode("utf-8"), golden)


def test_delivered_report() -> None:
    dsn = build([delivered("lone@gmail.example", "rfc822;lone@gmail.example",
                           "smtp; 250 2.0.0 written to /srv/mail/Q1.1.eml"),
                 delivered("peter@hotmail.example")])
    msg = parse(dsn)
    assert msg["Subject"] == "Afleveret / Delivered"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert [p.get_content_type() for p in msg.get_payload()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    first, second = msg.get_payload()[1].get_payload()[1:]
    assert first["Original-Recipient"] == "rfc822; lone@gmail.example"
    assert (first["Final-Recipient"], first["Action"], first["Status"]) == (
        "rfc822; lone@gmail.example", "delivered", "2.0.0")
    assert first["Diagnostic-Code"] == "smtp; 250 2.0.0 written to /srv/mail/Q1.1.eml"
    assert (second["Action"], second["Status"]) == ("delivered", "2.0.0")
    assert second["Diagnostic-Code"] is None  # none given, none made up
    text = text_of(msg)
    english = text.index("This is an automatic message")
    assert 0 < text.index("Din mail er afleveret til:") < english \
        < text.index("Your message was delivered to:")
    for address in ("lone@gmail.example", "peter@hotmail.example"):
        assert address in text[:english] and address in text[english:]
    assert SECRET.encode() not in dsn


def test_relayed_report() -> None:
    dsn = build([relayed("lone@gmail.example")])
    msg = parse(dsn)
    assert msg["Subject"] == "Sendt videre / Relayed"
    [block] = msg.get_payload()[1].get_payload()[1:]
    assert (block["Final-Recipient"], block["Action"], block["Status"]) == (
        "rfc822; lone@gmail.example", "relayed", "2.0.0")
    assert block["Diagnostic-Code"] == "smtp; 250 2.0.0 OK: queued as 4B2"
    text = text_of(msg)
    english = text.index("This is an automatic message")
    danish = " ".join(text[:english].split())
    assert "Din mail er sendt videre til:" in danish
    assert ("Din mail er sendt videre til modtagerens mailserver, som ikke kan bekræfte den "
            "endelige aflevering.") in danish
    assert ("passed on to the recipient's mail server, which cannot confirm final delivery"
            in " ".join(text[english:].split()))
    assert SECRET.encode() not in dsn
    assert all(SECRET not in str(part.get_payload()) for part in msg.walk())


@pytest.mark.parametrize("notice", [delivered("lone@gmail.example"),
                                    relayed("lone@gmail.example")])
def test_success_has_nothing_to_do_and_nothing_alarming(notice: Notice) -> None:
    msg = parse(build([notice]))
    text = text_of(msg)
    for absent in ("Hvorfor:", "Det kan du gøre:", "Why:", "What you can do:", "ikke afleveret",
                   "not delivered", "årsag:", "reason:", "Digital Post", "Ring til", "Telephone",
                   "Kontakt IT", "Contact IT"):
        assert absent not in text
    assert "Ikke afleveret" not in msg["Subject"] and "Undeliverable" not in msg["Subject"]


@pytest.mark.parametrize(("actions", "subject"), [
    (("delivered", "relayed"), "Sendt videre / Relayed"),
    (("relayed", "delayed"), "Forsinket"),
    (("delivered", "failed"), "Ikke afleveret: sikker mail er ikke mulig"),
])
def test_the_subject_tells_the_gravest_news(actions: tuple[str, ...], subject: str) -> None:
    notices = {"delivered": delivered("a@gmail.example"), "relayed": relayed("b@gmail.example"),
               "failed": unsafe("c@gmail.example"),
               "delayed": Notice("d@gmail.example", "", "delayed", "4.4.1",
                                 "x-send-sikkert; timeout", "delayed")}
    msg = parse(build([notices[a] for a in actions]))
    assert msg["Subject"].startswith(subject)
    blocks = msg.get_payload()[1].get_payload()[1:]
    assert [b["Action"] for b in blocks] == list(actions)


def test_mixed_failure_and_success_explains_only_the_failure() -> None:
    text = text_of(parse(build([delivered("a@gmail.example"), unsafe("c@gmail.example")])))
    english = text.index("This is an automatic message")
    danish = text[:english]
    assert danish.index("Din mail er ikke afleveret til:") < danish.index("Hvorfor:") \
        < danish.index("Din mail er afleveret til:")
    assert danish.count("Det kan du gøre:") == 1


def test_header_injection_through_an_address_is_impossible() -> None:
    dsn = build([unsafe("lone@gmail.example\r\nBcc: evil@example.com")])
    assert b"\r\nBcc:" not in dsn


def test_a_long_diagnostic_is_folded_and_unfolds_unchanged() -> None:
    reason = "smtp; 550 5.7.1 " + " ".join(f"word{i}" for i in range(60))
    dsn = build([Notice("lone@gmail.example", "", "failed", "5.7.1", reason, "rejected")])
    assert all(len(line) <= 998 for line in dsn.split(b"\r\n"))
    block = parse(dsn).get_payload()[1].get_payload()[1]
    assert block["Diagnostic-Code"] == reason


def test_a_diagnostic_without_a_type_gets_ours() -> None:
    msg = parse(build([Notice("lone@gmail.example", "", "failed", "5.7.1", "refused", "unsafe")]))
    assert msg.get_payload()[1].get_payload()[1]["Diagnostic-Code"] == "x-send-sikkert; refused"


def test_lines_end_in_crlf() -> None:
    dsn = build([unsafe("lone@gmail.example")])
    assert b"\n" not in dsn.replace(b"\r\n", b"")


def test_no_notices_is_an_error() -> None:
    with pytest.raises(ValueError):
        build([])


def test_the_golden_matcher_catches_differences() -> None:
    golden = "Subject: {*}\nContent-Type: x; boundary={b}\n--{b}\nend"
    assert_matches_golden("Subject: hi\nContent-Type: x; boundary=B1\n--B1\nend", golden)
    for wrong in ("Subject: hi\nContent-Type: x; boundary=B1\n--B2\nend",  # boundary changed
                  "Subject: hi\nContent-Type: x; boundary=B1\n--B1\nEND",  # literal differs
                  "Subject: hi\nContent-Type: x; boundary=B1\n--B1\nend\nextra"):
        with pytest.raises(AssertionError):
            assert_matches_golden(wrong, golden)


def test_dlp_bounce_names_every_place_never_a_number() -> None:
    found_in = (("subject", ""), ("body", ""), ("attachment", "bilag.pdf"), ("attachment", ""))
    original = ORIGINAL.replace(b"Om borgeren", b"Borger 010203-1234")
    dsn = build([Notice("lone@gmail.example", "", "failed", "5.7.1", "x-send-sikkert; cpr",
                        "cpr_blocked", found_in=found_in)], original=original)
    text = " ".join(text_of(parse(dsn)).split())
    assert ("CPR-nummer i emnefeltet, selve mailen, den vedhæftede fil »bilag.pdf« og en "
            "vedhæftet fil uden navn") in text
    assert ("but the subject, the text of the message, the attachment “bilag.pdf” and an "
            "attachment without a name holds a CPR number") in text
    # Not in the text, not in the copy of the headers: not even the last four digits
    # (outside the random boundaries and Message-ID, where any four digits may occur).
    assert b"1234" not in without_identifiers(dsn)
    assert "Borger 010203-XXXX" in parse(dsn).get_payload()[2].get_payload()


def test_a_field_with_an_8bit_name_is_masked_and_kept() -> None:
    # Such a name breaks RFC 5322, but SMTP lets it through; the report must still be built
    # (no bounce is lost) and the number in it masked.
    original = ORIGINAL.replace(b"Subject:", b"\xc3(: 220910-1234\r\nSubject:")
    dsn = build([unsafe("lone@gmail.example")], original=original)
    assert b"220910-1234" not in dsn
    assert b"\xc3(: 220910-XXXX" in dsn


def test_dlp_bounce_matches_the_golden_file() -> None:
    original = ORIGINAL.replace(b"Subject: Om borgeren", b"Subject: Om Bente 010190-1234")
    original = original.replace(b"X-Send-Sikkert: aeldreomsorg\r\n", b"")  # untagged
    dsn = build([Notice("lone@gmail.example", "", "failed", "5.7.1",
                        unsafe("x").diagnostic, "cpr_found",
                        found_in=(("body", ""), ("attachment", "brev til Ole.pdf")))],
                original=original)
    golden = (GOLDEN / "cpr_found.dsn").read_text(encoding="utf-8")
    assert_matches_golden(dsn.decode("utf-8"), golden)


def test_utf8_mailboxes_make_a_global_report() -> None:
    """RFC 6533: a UTF-8 address or header section needs the global types."""
    notice = Notice(address="søren@ærø.dk", orcpt="utf-8;søren@ærø.dk", action="failed",
                    status="5.7.1", diagnostic="x-send-sikkert; no secure route", kind="unsafe")
    original = "From: Åse <åse@brøndby.dk>\r\nSubject: Æble\r\n\r\nbody\r\n".encode()
    dsn = build_dsn(hostname=HOSTNAME, organisation=ORGANISATION, queue_id="Q1",
                    arrival=ARRIVAL, sender="åse@brøndby.dk", original_headers=original,
                    notices=[notice])
    msg = parse(dsn)
    assert [p.get_content_type() for p in msg.get_payload()] == [
        "text/plain", "message/global-delivery-status", "message/global-headers"]
    headers = msg.get_payload()[2]
    assert "Final-Recipient: utf-8; søren@ærø.dk\r\n".encode() in dsn  # UTF-8 as it is
    assert "Original-Recipient: utf-8; søren@ærø.dk\r\n".encode() in dsn
    assert headers["Content-Transfer-Encoding"] == "8bit"
    assert "Subject: Æble".encode() in dsn and b"body" not in dsn
    assert is_global("åse@brøndby.dk", original, [notice])


def test_ascii_reports_stay_plain() -> None:
    assert not is_global(SENDER, ORIGINAL, [unsafe("lone@gmail.example")])
    latin1 = b"From: a@brondby.dk\r\nSubject: \xe6ble\r\n\r\n"  # 8-bit, not UTF-8: no claim
    assert not is_global(SENDER, latin1, [unsafe("lone@gmail.example")])


def test_a_delayed_notice_says_until_when() -> None:
    notice = Notice(address="lone@gmail.example", orcpt="", action="delayed", status="4.4.1",
                    diagnostic="x-send-sikkert; 451 4.4.1 cannot connect", kind="delayed",
                    will_retry_until=ARRIVAL + 432000)
    fields = parse(build([notice])).get_payload()[1].get_payload()[1]
    until = email.utils.parsedate_to_datetime(fields["Will-Retry-Until"]).timestamp()
    assert until == ARRIVAL + 432000


def test_xtext_cannot_smuggle_control_characters_into_the_report() -> None:
    """ORCPT and ENVID are xtext: "+00", "+0D+0A" decode to NUL and CR LF (RFC 3461 4)."""
    notice = Notice(address="lone@gmail.example", orcpt="rfc822;lone+00+0D+0AX-Evil:+20y@x.dk",
                    action="failed", status="5.7.1", diagnostic="x-send-sikkert; x",
                    kind="unsafe")
    dsn = build([notice], envid="E+0D+0AX-Evil:+20z+00")
    status = dsn.split(b"message/delivery-status", 1)[1].split(b"\r\n--=_", 1)[0]
    assert b"\0" not in status and b"\nX-Evil" not in status
    fields = parse(dsn).get_payload()[1].get_payload()
    assert "X-Evil" not in fields[0] and "X-Evil" not in fields[1]
