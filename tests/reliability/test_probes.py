"""Hostile and odd messages through the real daemon, each with what the gateway did.

Every probe either is refused at the SMTP edge (and nothing is queued), or is accepted
and then delivered (tagged mail to an S/MIME recipient: only encrypted) or bounced,
with no header field the gateway wrote holding a CR, LF or NUL of its own.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_smime import publish
from tests.support.daemon import Daemon, GatewayConfig
from tests.support.pki import CA
from tests.support.rawsmtp import RawSmtp
from tests.support.sink import SmtpSink

OK = 250
LINE_TOO_LONG = 500
REFUSED = 554
SENDER = b"lela@brondby.dk"
SMIME = b"olelsen@dhl.dk"  # has a certificate in the directory
HEAD = b"From: Lene Larsen <lela@brondby.dk>\r\nTo: olelsen@dhl.dk\r\n"
TAGGED = HEAD + b"Subject: aeldreomsorg%% Vedr. din mor\r\nMIME-Version: 1.0\r\n"


@pytest.fixture(scope="module")
def probe_gateway(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[Daemon]:
    config = GatewayConfig(tmp_path_factory.mktemp("probes"), ca)
    publish(config, ca.issue("olelsen@dhl.dk"), "ole")
    daemon = Daemon(config)
    daemon.start()
    yield daemon
    daemon.stop()


def send(gateway: Daemon, data: bytes, rcpt: bytes = SMIME) -> tuple[int, bytes]:
    with RawSmtp(gateway.config.smtp_port) as s:
        s.command(b"EHLO exchange.brondby.dk")
        s.command(b"MAIL FROM:<" + SENDER + b">")
        s.command(b"RCPT TO:<" + rcpt + b">")
        code, text = s.data(data)
    return code, b" ".join(text)


def settle(gateway: Daemon, before: set[Path]) -> list[Path]:
    gateway.wait_queue_empty(30)
    time.sleep(0.1)
    return [p for p in gateway.outbox() if p not in before]


def header_lines_are_sound(raw: bytes) -> bool:
    """Each line of the header block is a field or a continuation: nothing injected."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    if b"\0" in head or b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
        return False
    return all(line[:1] in (b" ", b"\t") or b":" in line for line in head.split(b"\r\n"))


def describe(files: list[Path]) -> tuple[str, bool]:
    """What came out, and whether it was all sound (encrypted when tagged, clean headers)."""
    kinds = []
    sound = True
    for path in files:
        raw = path.read_bytes()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        sound = sound and header_lines_are_sound(raw)
        if msg.get_content_type() == "multipart/report":
            status = msg.get_payload()[1].get_payload()[1]["Status"]
            kinds.append(f"DSN {status}")
        elif msg.get_content_type() == "application/pkcs7-mime":
            kinds.append("encrypted copy")
        else:
            kinds.append("plain copy")
            sound = sound and "X-Envelope-To: olelsen@dhl.dk" not in raw.decode(errors="replace")
    return ", ".join(kinds) or "nothing", sound


def nested_multipart(boundary_part: bytes) -> bytes:
    return TAGGED + boundary_part


PROBES = {
    "vertical_tab": TAGGED + b"Content-Type: text/plain\r\n\r\nline\x0bwith VT\r\n",
    "form_feed": TAGGED + b"Content-Type: text/plain\r\n\r\npage one\x0cpage two\r\n",
    "vt_ff_in_subject": HEAD + b"Subject: aeldreomsorg%% a\x0bb\x0cc\r\n\r\nbody\r\n",
    "bom_before_dot": TAGGED + b"\r\nline\r\n\xef\xbb\xbf.\r\nMAIL FROM:<evil@x.dk>\r\n",
    "nul_before_dot": TAGGED + b"\r\nline\r\n\x00.\r\nMAIL FROM:<evil@x.dk>\r\n",
    "bare_lf_before_dot": TAGGED + b"\r\nline\n.\nMAIL FROM:<evil@x.dk>\r\n",
    "long_header_line": HEAD + b"Subject: aeldreomsorg%% " + b"x" * 5000 + b"\r\n\r\nbody\r\n",
    "long_folded_header": HEAD + b"Subject: aeldreomsorg%% x\r\n"
                          + b"X-Long: " + b"\r\n ".join([b"y" * 70] * 700) + b"\r\n\r\nbody\r\n",
    "many_header_fields": TAGGED + b"".join(b"X-Probe-%d: %d\r\n" % (i, i)
                                            for i in range(10_000)) + b"\r\nbody\r\n",
    "many_subjects": HEAD + b"Subject: hej\r\n" * 999 + b"Subject: aeldreomsorg%% x\r\n"
                     + b"\r\nbody\r\n",
    "encoded_crlf_in_subject": HEAD + b"Subject: =?utf-8?q?aeldreomsorg=25=25_x=0D=0A"
                               b"Bcc:_evil=40hotmail.dk?=\r\n\r\nbody\r\n",
    "latin1_raw_subject": HEAD + b"Subject: aeldreomsorg%% \xe6ble\r\n\r\nbody\r\n",
    "no_boundary_parameter": TAGGED + b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nhi\r\n",
    "boundary_never_used": TAGGED + b'Content-Type: multipart/mixed; boundary="x"\r\n\r\nhi\r\n',
    "unterminated_multipart": TAGGED + b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n'
                              b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n",
    "nested_same_boundary": TAGGED + b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n'
                            b'--x\r\nContent-Type: multipart/mixed; boundary="x"\r\n\r\n'
                            b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n--x--\r\n",
    "overlong_boundary": TAGGED + b'Content-Type: multipart/mixed; boundary="' + b"b" * 200
                         + b'"\r\n\r\n--' + b"b" * 200 + b"\r\nContent-Type: text/plain\r\n"
                         b"\r\nhi\r\n--" + b"b" * 200 + b"--\r\n",
    "broken_base64_part": TAGGED + b"Content-Type: text/plain\r\nContent-Transfer-Encoding:"
                          b" base64\r\n\r\n!!!not base64===\r\n",
    "unknown_charset_text": TAGGED + b"Content-Type: text/plain; charset=x-klingon\r\n\r\nqaH\r\n",
    "deep_nesting": TAGGED + b"".join(b'Content-Type: multipart/mixed; boundary="%d"\r\n\r\n'
                                      b"--%d\r\n" % (i, i) for i in range(150))
                    + b"Content-Type: text/plain\r\n\r\nhi\r\n",
    "many_parts": TAGGED + b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n'
                  + b"--p\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 1500 + b"--p--\r\n",
}


@pytest.mark.parametrize("name", list(PROBES))
def test_probe(probe_gateway: Daemon, outcome, name: str):
    before = set(probe_gateway.outbox())
    code, text = send(probe_gateway, PROBES[name])
    if code != OK:
        outcome(f"refused at DATA: {code} {text.decode(errors='replace')[:70]}")
        assert code in (LINE_TOO_LONG, REFUSED), (code, text)
        assert probe_gateway.spooled() == []
        return
    files = settle(probe_gateway, before)
    what, sound = describe(files)
    outcome(f"accepted, then {what}")
    assert files and sound, what


async def test_smuggling_shapes_reach_the_next_hop_as_one_message(config: GatewayConfig,
                                                                  daemons, outcome):
    """Untagged mail with VT, FF and a BOM before a dot travels unchanged and whole."""
    body = b"line\x0bone\x0c\r\n\xef\xbb\xbf.\r\nMAIL FROM:<evil@x.dk>\r\n.hidden dot\r\n"
    async with SmtpSink() as sink:
        config.default_route = sink.route
        gateway = Daemon(config)
        daemons.append(gateway)
        await asyncio.to_thread(gateway.start)
        data = b"From: a@brondby.dk\r\nTo: x@hotmail.dk\r\nSubject: s\r\n\r\n" + body
        wire = data.replace(b"\r\n.hidden", b"\r\n..hidden")  # dot-stuffed, RFC 5321 4.5.2
        code, _ = await asyncio.to_thread(send, gateway, wire, b"x@hotmail.dk")
        assert code == OK
        [msg] = await sink.wait_for(1, within=15)
        await asyncio.sleep(0.5)
    assert len(sink.messages) == 1 and msg.rcpt_tos == ["x@hotmail.dk"]
    assert msg.content.endswith(body)
    outcome("VT, FF and BOM-dot relayed byte for byte as one message; no second MAIL")


def test_a_directory_certificate_that_does_not_parse(config: GatewayConfig, daemons, ca: CA,
                                                     outcome):
    publish(config, ca.issue("olelsen@dhl.dk"), "ole")
    (config.certs / "directory" / "broken.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    (config.certs / "directory" / "garbage.pem").write_bytes(b"\x00\xff" * 100)
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    check = gateway.cli("check", "olelsen@dhl.dk", "broken@dhl.dk")
    code, _ = send(gateway, TAGGED + b"\r\nHun har skinnebenssaar.\r\n")
    assert code == OK
    what, sound = describe(settle(gateway, set()))
    logged = [line for line in gateway.logs().splitlines() if "broken.pem" in line
              or "garbage.pem" in line]
    outcome(f"daemon started; check: {check.stdout.split()[1:2]}...; mail: {what}; "
            f"{len(logged)} log line(s) name the bad files")
    assert "smime" in check.stdout.splitlines()[0] and what == "encrypted copy" and sound
