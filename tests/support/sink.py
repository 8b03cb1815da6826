"""An SMTP server for tests that records what it receives: the other end of a delivery.

It runs inside the test's own event loop (`loop.create_server` with an aiosmtpd `SMTP`
protocol, no thread), on loopback and a free port unless told otherwise::

    async with SmtpSink(tls=server_tls(ca, "localhost"), dsn=True,
                        refuse={"b@x.test": "550 5.1.1 no such user"}) as sink:
        route = sink.route                   # "smtp://127.0.0.1:PORT"
        ...deliver...
        [msg] = await sink.wait_for(1)       # Received: envelope, options, content, tls
        assert msg.tls and msg.rcpt_options["a@x.test"] == ["NOTIFY=FAILURE"]
        assert ("MAIL", False) not in sink.commands   # no MAIL ever in plaintext

Behaviour can change between attempts (for retry scenarios) by assigning to `refuse`,
`mail_reply` and `data_reply` while it runs. With `dsn=True` it advertises DSN and accepts
the RFC 3461 parameters (NOTIFY, ORCPT on RCPT; RET, ENVID on MAIL), keeping their case.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.message
import email.policy
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.ports import free_port as free_port  # where the tests have always got it

_DSN_MAIL = ("RET", "ENVID")
_DSN_RCPT = ("NOTIFY", "ORCPT")


@dataclass
class Received:
    """One message the sink accepted at DATA."""

    mail_from: str  # "<>" for the null sender, as aiosmtpd reports it
    rcpt_tos: list[str]
    mail_options: list[str]  # e.g. ["BODY=8BITMIME", "SIZE=123", "RET=HDRS", "ENVID=x"]
    rcpt_options: dict[str, list[str]]  # per accepted recipient, e.g. ["NOTIFY=FAILURE"]
    content: bytes  # as received, CRLF line endings, dots unstuffed
    tls: bool  # STARTTLS was active when the message came
    tls_version: str | None  # e.g. "TLSv1.3"
    helo: str | None  # the client's EHLO/HELO name

    @property
    def message(self) -> email.message.EmailMessage:
        """The content parsed with the modern email policy."""
        msg = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg


class _Envelope(Envelope):
    """aiosmtpd's envelope plus the options each recipient came with."""

    def __init__(self) -> None:
        super().__init__()
        self.per_rcpt: dict[str, list[str]] = {}


class _Protocol(SMTP):
    """aiosmtpd's SMTP, taught to accept the RFC 3461 parameters it does not know."""

    def __init__(self, sink: SmtpSink, **kwargs: Any) -> None:
        super().__init__(sink, **kwargs)
        self.sink = sink
        self.dsn_params: list[str] = []

    def _create_envelope(self) -> Envelope:
        return _Envelope()

    async def smtp_MAIL(self, arg: str | None) -> None:
        arg, self.dsn_params = self._take(arg, _DSN_MAIL)
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        arg, self.dsn_params = self._take(arg, _DSN_RCPT)
        await super().smtp_RCPT(arg)

    def _take(self, arg: str | None, names: tuple[str, ...]) -> tuple[str | None, list[str]]:
        """Split off the DSN parameters (when DSN is on) so aiosmtpd sees only its own."""
        if arg is None or not self.sink.dsn:
            return arg, []
        words = arg.split(" ")
        taken = [w for w in words[1:] if w.partition("=")[0].upper() in names]
        return " ".join(w for w in words if w not in taken), taken

    @property
    def tls_version(self) -> str | None:
        if self.session is None or self.session.ssl is None:
            return None
        obj = self.session.ssl.get("ssl_object")
        return obj.version() if obj else None


class SmtpSink:
    """A recording SMTP server on loopback; see the module docstring for an example.

    tls:          a server SSLContext: STARTTLS is offered with it (None: not offered).
    dsn:          advertise DSN and accept NOTIFY/ORCPT/RET/ENVID.
    smtputf8:     advertise SMTPUTF8.
    eightbitmime: advertise 8BITMIME (aiosmtpd does by default).
    pipelining:   advertise PIPELINING (RFC 2920; aiosmtpd reads commands sent together
                  in order either way, but does not say so).
    refuse:       address -> full reply line for RCPT, e.g. "550 5.1.1 no such user"
                  (matched case-insensitively; keys added later must be lower case).
    mail_reply:   a reply line for every MAIL FROM instead of 250.
    data_reply:   a reply line at the end of DATA instead of 250 (the message is then
                  not recorded as received).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, hostname: str = "sink.test",
                 tls: ssl.SSLContext | None = None, dsn: bool = False, smtputf8: bool = False,
                 eightbitmime: bool = True, pipelining: bool = False,
                 refuse: Mapping[str, str] | None = None,
                 mail_reply: str | None = None, data_reply: str | None = None) -> None:
        self.host, self.port, self.hostname = host, port, hostname
        self.tls, self.dsn, self.smtputf8, self.eightbitmime = tls, dsn, smtputf8, eightbitmime
        self.pipelining = pipelining
        self.refuse = {k.lower(): v for k, v in (refuse or {}).items()}
        self.mail_reply, self.data_reply = mail_reply, data_reply
        self.messages: list[Received] = []
        self.commands: list[tuple[str, bool]] = []  # (EHLO|RSET|MAIL|RCPT|DATA, TLS active)
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._protocols: list[_Protocol] = []
        self._arrived = asyncio.Condition()

    @property
    def address(self) -> str:
        """host:port as the configuration writes it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def route(self) -> str:
        """The `smtp://` route that reaches this sink."""
        return f"smtp://{self.address}"

    async def start(self) -> SmtpSink:
        loop = asyncio.get_running_loop()

        def protocol() -> _Protocol:
            self.connections += 1
            p = _Protocol(self, hostname=self.hostname, ident="sink", tls_context=self.tls,
                          enable_SMTPUTF8=self.smtputf8, decode_data=False, loop=loop)
            self._protocols.append(p)
            return p

        self._server = await loop.create_server(protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def drop_connections(self) -> None:
        """Close every open connection, as a hop does with idle clients."""
        for p in self._protocols:
            if p.transport is not None:
                p.transport.close()

    async def stop(self) -> None:
        """Stop listening and drop the connections still open."""
        if self._server is None:
            return
        self._server.close()
        for p in self._protocols:
            if p.transport is not None:
                p.transport.close()
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let the connections' handler tasks see the cancellation
        self._server = None

    async def __aenter__(self) -> SmtpSink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(self, count: int = 1, within: float = 5) -> list[Received]:
        """Wait until at least `count` messages have arrived; return all of them.

        TimeoutError after `within` seconds, so a scenario that never delivers fails fast.
        """
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.messages) >= count)
        return self.messages

    # aiosmtpd handler hooks: each returns the reply the client gets.

    async def handle_EHLO(self, server: _Protocol, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        self.commands.append(("EHLO", session.ssl is not None))
        if not self.eightbitmime:
            responses = [r for r in responses if r[4:] != "8BITMIME"]
        if self.dsn:
            responses.insert(-1, "250-DSN")
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RSET(self, server: _Protocol, session: Session,
                          envelope: Envelope) -> str:
        self.commands.append(("RSET", session.ssl is not None))
        return "250 2.0.0 OK"

    async def handle_MAIL(self, server: _Protocol, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        self.commands.append(("MAIL", session.ssl is not None))
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options + server.dsn_params)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: _Protocol, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        self.commands.append(("RCPT", session.ssl is not None))
        refusal = self.refuse.get(address.lower())
        if refusal:
            return refusal
        assert isinstance(envelope, _Envelope)
        envelope.rcpt_tos.append(address)
        envelope.per_rcpt[address] = options + server.dsn_params
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: _Protocol, session: Session, envelope: Envelope) -> str:
        self.commands.append(("DATA", session.ssl is not None))
        if self.data_reply:
            return self.data_reply
        assert isinstance(envelope, _Envelope) and isinstance(envelope.content, bytes)
        received = Received(
            mail_from=envelope.mail_from or "", rcpt_tos=list(envelope.rcpt_tos),
            mail_options=list(envelope.mail_options), rcpt_options=dict(envelope.per_rcpt),
            content=envelope.original_content or envelope.content,
            tls=session.ssl is not None, tls_version=server.tls_version,
            helo=session.host_name)
        async with self._arrived:
            self.messages.append(received)
            self._arrived.notify_all()
        return "250 2.0.0 OK: queued"


Hop = Callable[..., SmtpSink]  # SmtpSink with some of its options already chosen


@contextlib.contextmanager
def on_a_thread(sink: SmtpSink) -> Iterator[SmtpSink]:
    """Run `sink` on an event loop of a thread of its own, for a test that blocks (on a
    daemon it started, say): its `messages` may be read meanwhile, its replies changed."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="sink", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(sink.start(), loop).result(10)
        try:
            yield sink
        finally:
            asyncio.run_coroutine_threadsafe(sink.stop(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def server_tls(ca: trustme.CA, *names: str,
               maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A server context with a certificate from `ca` for `names` (DNS names or IPs)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    if maximum is not None:
        context.maximum_version = maximum
    return context
