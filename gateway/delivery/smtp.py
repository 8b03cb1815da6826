"""One SMTP session with one host: STARTTLS as the TLS policy demands, then one transaction.

RFC 5321 (the session, per-recipient replies, DATA applying to accepted recipients),
RFC 3207 (STARTTLS, EHLO again afterwards), RFC 3461 (NOTIFY/ORCPT/RET/ENVID only to a
server that advertises DSN, which then owes the DSNs for what it accepted: 6.2),
RFC 6152 (BODY=8BITMIME; for a server without it 8-bit mail is converted to 7-bit),
RFC 6531 (SMTPUTF8), RFC 1870 (SIZE), RFC 3463 (enhanced status codes) and RFC 2920
(PIPELINING: to a host that offers it, RSET, MAIL, every RCPT and DATA go in one write
and their replies are read in order; else one command at a time). Every level but `may`
never sends a byte of the message in plaintext: a missing STARTTLS, a refused one or a
failed handshake or certificate check ends the session with 4.7.5. Under `dane` the
peer's chain is matched against the host's TLSA records right after the handshake
(RFC 7672 3), before EHLO is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.response import SMTPResponse

from gateway.delivery import Rcpt, Result, Route, TlsPolicy, dane, same_reply
from gateway.delivery.connections import Session, SessionCache, close_politely
from gateway.delivery.data import COMPLETED, START_INPUT, data_refused, send_data, send_text
from gateway.delivery.pipelining import Group, command
from gateway.errors import Reply
from gateway.spool.body import MessageData, head_of, pieces, whole
from gateway.transform.downgrade import ConversionImpossible, to_7bit
from gateway.transform.mime import MimeLimitError

log = logging.getLogger(__name__)

_WILL_FORWARD = 251
_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)")
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")  # atext, dots
_XTEXT_PLAIN = re.compile(r"\+[0-9A-F]{2}|[!-*,-<>-~]")


class HostFailure(Exception):
    """The host as a whole could not take the message; another host might."""

    def __init__(self, reply: Reply, *, tls: bool = False) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.tls = tls


class _PlaintextRetry(Exception):
    """Opportunistic STARTTLS failed: Postfix's `may` level then tries without TLS."""


class _Stale(Exception):
    """A kept session turned out closed before anything was sent: open a new one."""


@dataclass(frozen=True)
class Outgoing:
    """One message for one next hop: the envelope and the message (its body maybe on disk)."""

    sender: str
    rcpts: tuple[Rcpt, ...]
    data: MessageData
    queue_id: str = ""
    ret: str = ""
    envid: str = ""
    smtputf8: bool = False

    @property
    def needs_utf8(self) -> bool:
        """Whether the sender or the header section can only travel with SMTPUTF8."""
        data = head_of(self.data)
        m = _END_OF_HEADERS.search(data)
        head = data[: m.start()] if m else data
        return not self.sender.isascii() or (self.smtputf8 and not head.isascii())


@dataclass(frozen=True)
class HostReplies:
    """What one host answered: a reply per recipient, and whether it advertised DSN."""

    replies: dict[str, Reply]
    dsn: bool = False  # so NOTIFY/ORCPT/RET/ENVID went with the message
    tls_version: str = ""  # the session's TLS, for the log; "" when it was plaintext
    tls_cipher: str = ""

    @property
    def dsn_relayed(self) -> frozenset[str]:
        """The recipients this host accepted and now owes any DSN for (RFC 3461 6.2)."""
        if not self.dsn:
            return frozenset()
        return frozenset(a for a, reply in self.replies.items() if 200 <= reply.code < 300)


def server_reply(code: int, message: str) -> Reply:
    """A server's reply as a Reply, its enhanced status taken from the text (RFC 2034)."""
    status, texts = "", []
    for line in message.splitlines():
        m = _ENHANCED.match(line)
        if m and m[1][0] == str(code)[0]:  # a status of another class is just text
            status = status or m[1]
            line = line[m.end():]
        if line.strip():
            texts.append(line.strip())
    return Reply(code, status or f"{code // 100}.0.0", " ".join(texts), remote=True)


def xtext(value: str) -> str:
    """RFC 3461 4 xtext: valid xtext (as received) stays, anything else is encoded."""
    out, i = [], 0
    while i < len(value):
        m = _XTEXT_PLAIN.match(value, i)
        if m:
            out.append(m[0])
            i = m.end()
        else:
            out.append("".join(f"+{b:02X}" for b in value[i].encode("utf-8")))
            i += 1
    return "".join(out)


class SmtpTransport:
    """Delivers over SMTP to `smtp://host:port` routes, and to the hosts `mx` found."""

    def __init__(self, hostname: str, *, timeout: float = 60, connect_timeout: float = 30,
                 data_timeout: float = 600, sessions: SessionCache | None = None) -> None:
        self.hostname = hostname  # our EHLO name
        self.timeout = timeout  # per command
        self.connect_timeout = connect_timeout  # TCP connect and greeting
        self.data_timeout = data_timeout  # RFC 5321 4.5.3.2.6: 10 minutes for the DATA reply
        self._contexts: dict[TlsPolicy, tuple[int, ssl.SSLContext]] = {}  # with the CA's mtime
        self.sessions = sessions or SessionCache()

    async def deliver(self, route: Route, domain: str, sender: str, rcpts: Sequence[Rcpt],
                      data: MessageData, tls: TlsPolicy, *, queue_id: str, ret: str = "",
                      envid: str = "", smtputf8: bool = False) -> Result:
        """One session with the route's host; its name is the one the certificate must carry."""
        message = Outgoing(sender, tuple(rcpts), data, queue_id, ret, envid, smtputf8)
        peer = describe_peer(route.host, route.port, route.host)
        if tls.per_destination:  # fail closed: the level needs the MX hosts' DNS
            return same_reply(rcpts, Reply(451, "4.7.5", f"TLS level {tls.level} applies to "
                                                         f"mx routes only, not {route}"),
                              tls_failure=True, peer=peer)
        try:
            answer = await self.send(route.host, route.port, route.host, message, tls)
        except HostFailure as e:
            return same_reply(rcpts, e.reply, tls_failure=e.tls, peer=peer)
        return Result(answer.replies, peer=peer, dsn_relayed=answer.dsn_relayed,
                      tls_version=answer.tls_version, tls_cipher=answer.tls_cipher)

    async def send(self, address: str, port: int, tls_name: str, message: Outgoing,
                   tls: TlsPolicy) -> HostReplies:
        """One session with one host: a reply per recipient, HostFailure if none could be had.

        `address` is what we connect to (a name or an IP address); `tls_name` is the name
        the certificate is checked against under the `verify` level.
        """
        try:
            return await self._session(address, port, tls_name, message, tls, starttls=True)
        except _PlaintextRetry as e:
            log.info("%s: %s: opportunistic TLS failed (%s), retrying in plaintext",
                     message.queue_id, describe_peer(address, port, tls_name), e)
            return await self._session(address, port, tls_name, message, tls,
                                       starttls=False)

    async def _session(self, address: str, port: int, tls_name: str, message: Outgoing,
                       tls: TlsPolicy, *, starttls: bool) -> HostReplies:
        """The transaction over a kept session to this hop, else over a new one."""
        peer = describe_peer(address, port, tls_name)
        # Never shared across TLS policies or certificate names (nor with plaintext retries).
        key = (address, port, tls_name, tls, starttls)
        kept = self.sessions.take(key)
        if kept is not None:
            try:
                return await self._over(kept, key, message, peer)
            except _Stale:
                pass  # the hop closed it while it was idle
        client = await self._open(address, port, tls_name, tls, peer, message.queue_id,
                                  starttls=starttls)
        return await self._over(Session(client), key, message, peer)

    async def _open(self, address: str, port: int, tls_name: str, tls: TlsPolicy, peer: str,
                    queue_id: str, *, starttls: bool) -> aiosmtplib.SMTP:
        """A new session past EHLO, and STARTTLS as the policy demands."""
        client = aiosmtplib.SMTP(hostname=address, port=port, local_hostname=self.hostname,
                                 timeout=self.timeout, start_tls=False)
        try:
            try:
                await client.connect(timeout=self.connect_timeout)
            except aiosmtplib.SMTPConnectResponseError as e:
                raise HostFailure(server_reply(e.code, e.message)) from None
            except (aiosmtplib.SMTPException, OSError) as e:
                raise HostFailure(Reply(451, "4.4.1", f"cannot connect to {peer}: {e}")) from None
            try:
                await _hello(client)
                if starttls:
                    await self._starttls(client, tls, tls_name, peer, queue_id)
            except aiosmtplib.SMTPResponseException as e:
                raise HostFailure(server_reply(e.code, e.message)) from None
            except (aiosmtplib.SMTPException, OSError) as e:
                raise HostFailure(Reply(451, "4.4.2", f"lost connection with {peer}: {e}")
                                  ) from None
        except BaseException:
            client.close()
            raise
        return client

    async def _over(self, session: Session, key: tuple, message: Outgoing,
                    peer: str) -> HostReplies:
        """One transaction; then the session is kept for the next message or closed."""
        client = session.client
        keep = False
        try:
            ssl_object = client.get_transport_info("ssl_object")
            answer, keep = await self._transaction(client, message, peer,
                                                   reused=session.messages > 0)
            if ssl_object is None:
                return answer
            return replace(answer, tls_version=ssl_object.version() or "",
                           tls_cipher=(ssl_object.cipher() or ("",))[0])
        except BaseException:
            client.close()  # maybe within DATA: a QUIT would be read as message text
            raise
        finally:
            if keep:
                await self.sessions.release(key, session)
            else:
                await close_politely(client)

    async def _starttls(self, client: aiosmtplib.SMTP, tls: TlsPolicy, tls_name: str,
                        peer: str, queue_id: str) -> None:
        if not client.supports_extension("starttls"):
            if tls.required:
                raise HostFailure(Reply(451, "4.7.5", f"TLS is required, but {peer} does "
                                                      "not offer STARTTLS"), tls=True)
            return
        try:
            context = await self._context(tls)
            # SNI is the name we expect (RFC 7672 8.1: the TLSA base domain under DANE).
            await client.starttls(server_hostname=tls_name, tls_context=context)
            if tls.tlsa:
                await self._dane(client, tls, tls_name, peer, queue_id)
            await client.ehlo()  # RFC 3207 4.2: forget what was learnt before TLS
        except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as e:
            if not tls.required:
                raise _PlaintextRetry(str(e)) from None
            raise HostFailure(Reply(451, "4.7.5", f"TLS with {peer} failed: {_why(e)}"),
                              tls=True) from None

    async def _dane(self, client: aiosmtplib.SMTP, tls: TlsPolicy, tls_name: str, peer: str,
                    queue_id: str) -> None:
        """Match the peer's chain against the TLSA records; HostFailure when none fits."""
        chain = peer_chain(client.get_transport_info("ssl_object"))
        try:
            match = await asyncio.to_thread(dane.verify, tls.tlsa, chain, tls_name)
        except dane.Mismatch as e:
            log.warning("%s: %s: DANE: no TLSA record of %s matched: %s", queue_id, peer,
                        tls_name, e)
            raise HostFailure(Reply(451, "4.7.5", f"DANE: the certificate of {peer} matches "
                                                  f"no TLSA record of {tls_name}: {e}"),
                              tls=True) from None
        log.info("%s: %s: DANE: %s", queue_id, peer, match)

    async def _context(self, tls: TlsPolicy) -> ssl.SSLContext:
        """A client context for the policy, rebuilt when its CA file changes."""
        stamp = tls.ca_file.stat().st_mtime_ns if tls.ca_file else 0
        key = replace(tls, tlsa=())  # the records are checked after the handshake
        cached = self._contexts.get(key)
        if cached is None or cached[0] != stamp:
            cached = stamp, await asyncio.to_thread(_build_context, key)
            self._contexts[key] = cached
        return cached[1]

    async def _transaction(self, client: aiosmtplib.SMTP, message: Outgoing, peer: str,
                           *, reused: bool = False) -> tuple[HostReplies, bool]:
        """The replies, and whether the session ended in a state fit for another message.

        _Stale when a kept (`reused`) session fails at MAIL: nothing was sent, so the
        message goes over a new session instead.
        """
        answer, clean = await self._commands(client, message, peer, reused)
        clean = clean and all(r.code != 421 for r in answer.replies.values())
        return answer, clean

    async def _commands(self, client: aiosmtplib.SMTP, message: Outgoing, peer: str,
                        reused: bool) -> tuple[HostReplies, bool]:
        dsn = client.supports_extension("dsn")
        utf8 = client.supports_extension("smtputf8")
        no_utf8 = Reply(553, "5.6.7", f"{peer} does not support SMTPUTF8, which this "
                                      "message or address needs")
        if message.needs_utf8 and not utf8:
            return HostReplies({r.address: no_utf8 for r in message.rcpts}, dsn), True
        replies: dict[str, Reply] = {}
        rcpts = []
        for r in message.rcpts:
            if r.address.isascii() or utf8:
                rcpts.append(r)
            else:
                replies[r.address] = no_utf8
        if not rcpts:
            return HostReplies(replies, dsn), True
        if not message.data.isascii() and not client.supports_extension("8bitmime"):
            try:  # RFC 6152 3: never 8-bit data to a server that did not ask for it
                data = await asyncio.to_thread(to_7bit, await whole(message.data))
            except (ConversionImpossible, MimeLimitError) as e:
                replies.update({r.address: Reply(554, "5.6.3", str(e)) for r in rcpts})
                return HostReplies(replies, dsn), True
            message = dataclasses.replace(message, data=data)
        use_utf8 = utf8 and (message.needs_utf8 or not all(r.address.isascii() for r in rcpts))
        envelope = _Envelope(message, rcpts, replies, _mail_options(client, message, use_utf8),
                             dsn, "utf-8" if use_utf8 else "ascii", reused)
        try:
            if client.supports_extension("pipelining"):
                await self._pipelined(client, envelope)
            else:
                await self._lockstep(client, envelope)
        except (aiosmtplib.SMTPException, OSError) as e:
            # Accepted recipients whose DATA reply never came may be delivered twice later:
            # RFC 5321 6.1 prefers that to losing the message.
            lost = Reply(451, "4.4.2", f"lost connection with {peer}: {e}")
            for r in rcpts:
                replies.setdefault(r.address, lost)
            client.close()  # maybe within DATA: a QUIT would be read as message text
            return HostReplies(replies, dsn), False
        return HostReplies(replies, dsn), True

    async def _lockstep(self, client: aiosmtplib.SMTP, envelope: _Envelope) -> None:
        """One command, one reply: RSET when the session is reused, MAIL, RCPT..., DATA."""
        message, replies = envelope.message, envelope.replies
        try:
            if envelope.reused:
                await client.rset()
            await client.mail(message.sender, options=envelope.mail_options,
                              encoding=envelope.encoding)
        except aiosmtplib.SMTPSenderRefused as e:
            if envelope.reused and e.code == 421:
                raise _Stale() from None
            envelope.refuse_all(server_reply(e.code, e.message))
            return
        except ValueError as e:  # an address aiosmtplib will not put on a command line
            envelope.refuse_all(Reply(553, "5.1.7", str(e)))
            return
        except (aiosmtplib.SMTPException, OSError):
            if envelope.reused:  # the hop closed it while it was idle: nothing was sent
                raise _Stale() from None
            raise
        accepted = []
        for r in envelope.rcpts:
            try:
                await client.rcpt(r.address, options=_rcpt_options(r, envelope.dsn),
                                  encoding=envelope.encoding)
                accepted.append(r)
            except aiosmtplib.SMTPRecipientRefused as e:
                replies[r.address] = server_reply(e.code, e.message)
            except ValueError as e:
                replies[r.address] = Reply(553, "5.1.3", str(e))
        if accepted:
            try:
                response = await send_data(client, pieces(message.data),
                                           wait=self.data_timeout)
                reply = server_reply(response.code, response.message)
            except aiosmtplib.SMTPDataError as e:
                reply = server_reply(e.code, e.message)
            replies.update({r.address: reply for r in accepted})

    async def _pipelined(self, client: aiosmtplib.SMTP, envelope: _Envelope) -> None:
        """RFC 2920: [RSET,] MAIL, every RCPT and DATA in one write, then the message.

        The replies are read in order and each counts as it would in lockstep. DATA is the
        group's last command; the message follows a 354 only when a recipient was taken;
        a 354 without one gets the lone dot that ends the empty transaction (3.1).
        """
        message, replies = envelope.message, envelope.replies
        try:
            mail = command(b"MAIL", b"FROM:" + _address(message.sender, envelope.encoding),
                           *(o.encode("ascii") for o in envelope.mail_options))
        except ValueError as e:
            envelope.refuse_all(Reply(553, "5.1.7", str(e)))
            return
        lines, sent = [mail], []
        for r in envelope.rcpts:
            try:
                lines.append(command(b"RCPT", b"TO:" + _address(r.address, envelope.encoding),
                                     *(o.encode("ascii") for o in _rcpt_options(r, envelope.dsn))))
                sent.append(r)
            except ValueError as e:
                replies[r.address] = Reply(553, "5.1.3", str(e))
        if not sent:
            return
        if envelope.reused:
            lines.insert(0, b"RSET\r\n")
        lines.append(b"DATA\r\n")
        got, error = await self._exchange(client, lines)
        if envelope.reused:  # a hop that closed the session while it was idle: a new one
            if not got[1:] or got[0].code != COMPLETED or got[1].code == 421:
                raise _Stale()
            got = got[1:]
        if not got:
            assert error is not None
            raise error
        mail, rcpt_replies, data = got[0], got[1:len(sent) + 1], got[len(sent) + 1:]
        accepted = []
        if mail.code != COMPLETED:  # the RCPT and DATA replies that follow are moot
            envelope.refuse_all(server_reply(mail.code, mail.message))
        else:
            for r, response in zip(sent, rcpt_replies, strict=False):
                if response.code in (COMPLETED, _WILL_FORWARD):
                    accepted.append(r)
                else:
                    replies[r.address] = server_reply(response.code, response.message)
        if error is not None:
            raise error  # the recipients without a reply yet get "lost connection"
        [response] = data
        if response.code != START_INPUT:
            refused = data_refused(response)
            if not isinstance(refused, aiosmtplib.SMTPDataError):
                raise refused
            replies.update({r.address: server_reply(response.code, response.message)
                            for r in accepted})
            return
        if not accepted:  # RFC 2920 3.1: end with a lone dot what the server began anyway
            with contextlib.suppress(aiosmtplib.SMTPDataError):
                await send_text(client, None, wait=self.data_timeout)
            return
        try:
            response = await send_text(client, pieces(message.data), wait=self.data_timeout)
        except aiosmtplib.SMTPDataError as e:
            response = SMTPResponse(e.code, e.message)
        replies.update({r.address: server_reply(response.code, response.message)
                        for r in accepted})

    async def _exchange(self, client: aiosmtplib.SMTP, lines: list[bytes]
                        ) -> tuple[list[SMTPResponse], Exception | None]:
        """A group's replies in order, and what cut them short: a lost connection, a
        timeout, or a hop out of step (more replies than commands: then none counts)."""
        got: list[SMTPResponse] = []
        try:  # a kept session the hop closed while it was idle fails at once: none came
            async with Group(client, lines) as group:
                for _ in range(len(lines) - 1):
                    got.append(await group.reply(wait=self.timeout))
                got.append(await group.reply(wait=self.data_timeout))  # RFC 5321 4.5.3.2
                if not group.in_step:
                    return [], aiosmtplib.SMTPResponseException(-1, "more replies than commands")
        except (aiosmtplib.SMTPException, OSError) as e:
            return got, e
        return got, None


@dataclass
class _Envelope:
    """One transaction's envelope and the replies gathered for it."""

    message: Outgoing
    rcpts: list[Rcpt]  # those that may go over this session
    replies: dict[str, Reply]
    mail_options: list[str]
    dsn: bool
    encoding: str
    reused: bool  # so RSET goes first

    def refuse_all(self, reply: Reply) -> None:
        self.replies.update({r.address: reply for r in self.rcpts})


def _address(address: str, encoding: str) -> bytes:
    """`<address>` for MAIL or RCPT, as aiosmtplib writes it (ValueError when it cannot).

    A plain `local@domain` (nearly every one) is what aiosmtplib would make of it without
    its trip through the email package's address parser, which costs more than the rest
    of the command line.
    """
    if _PLAIN_ADDRESS.fullmatch(address):
        return b"<" + address.encode("ascii") + b">"
    return quote_address(address).encode(encoding)


async def _hello(client: aiosmtplib.SMTP) -> None:
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        await client.helo()  # RFC 5321 3.2: fall back for a server without ESMTP


def _mail_options(client: aiosmtplib.SMTP, message: Outgoing, utf8: bool) -> list[str]:
    options = []
    if not message.data.isascii() and client.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    if utf8:
        options.append("SMTPUTF8")
    if client.supports_extension("size"):
        options.append(f"SIZE={len(message.data)}")
    if client.supports_extension("dsn"):
        if message.ret:
            options.append(f"RET={message.ret}")
        if message.envid:
            options.append(f"ENVID={xtext(message.envid)}")
    return options


def _rcpt_options(rcpt: Rcpt, dsn: bool) -> list[str]:
    if not dsn:
        return []
    options = []
    if rcpt.notify:
        options.append("NOTIFY=" + ",".join(rcpt.notify))
    if rcpt.orcpt:
        options.append(f"ORCPT={xtext(rcpt.orcpt)}")
    return options


def _build_context(tls: TlsPolicy) -> ssl.SSLContext:
    if tls.level == "verify":
        # Only the configured CA file when there is one; else the system store.
        context = ssl.create_default_context(cafile=_str(tls.ca_file))
    else:  # may, encrypt, and dane (whose records are matched after the handshake)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = _TLS_VERSIONS[tls.min_version]
    return context


def peer_chain(ssl_object: ssl.SSLObject | None) -> list[bytes]:
    """The certificates the peer sent, its own first, as DER, whether trusted or not."""
    if ssl_object is None:
        return []
    public = getattr(ssl_object, "get_unverified_chain", None)  # Python 3.13 and newer
    if public is not None:
        return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)
                for c in public() or []]
    # Python 3.11 and 3.12 have the same call, not yet public, on the inner object.
    inner = ssl_object._sslobj  # type: ignore[attr-defined]
    return [c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
            for c in inner.get_unverified_chain() or []]


def _str(path: Path | None) -> str | None:
    return str(path) if path else None


def _why(error: Exception) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {error.verify_message}"
    return str(error) or type(error).__name__


def describe_peer(address: str, port: int, name: str) -> str:
    """`name[address]:port` for logs and replies, or `address:port` when they are the same."""
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}" if name == address else f"{name}[{address}]:{port}"
