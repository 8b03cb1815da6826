"""The cases of the table: what is sent, to whom, how often and over how many sessions."""

from __future__ import annotations

from dataclasses import dataclass

from bench.load import Message

SENDER = "lela@brondby.dk"
PLAIN_RCPT = "modtager@example.net"
TUNNEL_RCPT = "sagsbehandler@sepo.bench.dk"
SMIME_RCPT = "olelsen@dhl.dk"  # a demo recipient of the development PKI
TAG = "aeldreomsorg"

_LINE = (b"Kaere modtager, her er et afsnit almindelig tekst i et brev fra kommunen om "
         b"et helt almindeligt emne.\r\n")


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    count: int
    sessions: int
    size: int  # body bytes
    recipient: str
    tagged: bool = False
    postfix_tls: bool = False  # Postfix relays it to the TLS front, TLS required
    quick_count: int = 0

    def message(self) -> Message:
        header = (f"From: Lene Larsen <{SENDER}>\r\nTo: <{self.recipient}>\r\n"
                  "Subject: Bench-besked\r\nDate: Mon, 2 Jun 2025 10:00:00 +0200\r\n"
                  "Message-ID: <bench@brondby.dk>\r\nMIME-Version: 1.0\r\n"
                  "Content-Type: text/plain; charset=us-ascii\r\n").encode()
        if self.tagged:
            header += f"X-Send-Sikkert: {TAG}\r\n".encode()
        body = _LINE * (self.size // len(_LINE) + 1)
        return Message(SENDER, (self.recipient,), header, body[:self.size])


CASES = (
    Case("untagged_5k", "untagged 5 KB, 20 sessions", 5000, 20, 5 * 1024, PLAIN_RCPT,
         quick_count=1000),
    Case("tunnel_5k", "tagged tunnel 5 KB (STARTTLS)", 3000, 20, 5 * 1024, TUNNEL_RCPT,
         tagged=True, postfix_tls=True, quick_count=600),
    Case("smime_5k", "tagged S/MIME 5 KB", 2000, 20, 5 * 1024, SMIME_RCPT, tagged=True,
         quick_count=400),
    Case("smime_1m", "tagged S/MIME 1 MB", 100, 20, 1024 * 1024, SMIME_RCPT, tagged=True,
         quick_count=40),
    Case("big_25m", "one 25 MB message", 1, 1, 25 * 1024 * 1024, PLAIN_RCPT, quick_count=1),
)
