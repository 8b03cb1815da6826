"""aiosmtpd's SMTP protocol with the DSN extension (RFC 3461) added, and its session rules
made strict (CONTRACT "SMTP behaviour that clients rely on").

aiosmtpd refuses MAIL/RCPT parameters it does not know, so RET/ENVID and NOTIFY/ORCPT are
taken off the command line here, checked, kept on the session, and the rest is handed to
aiosmtpd unchanged. The handler's EHLO hook advertises DSN.

Beyond aiosmtpd: source routes (RFC 5321 4.1.1.3, C) are refused, not ignored; AUTH does
not exist here (relay control is by network); a second STARTTLS is refused (RFC 3207 4.2);
a failed TLS handshake is one log line; `limits` refuses connections past the caps with
421 4.7.0; a session idle for `timeout` seconds (no byte from the client, also during
DATA; the time the gateway takes to answer a DATA does not count) gets 421 4.4.2 before
it is closed (RFC 5321 4.5.3.2.7).

DATA is read in chunks, not lines (`edge/data.py`), into a body the handler gives
(`Handler.incoming`: the spool's, streamed to disk when large); the handler's DATA hook
then finds the body and what the reader saw in `received`.

Behind a load balancer (`smtp.proxy_protocol`) it asks only trusted proxies for a PROXY
header (`edge/proxy.py`) and keeps the client the header names as the session's peer,
through STARTTLS too (aiosmtpd starts a fresh session after the handshake); the limits
then count that client, admitted once its header has come.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Protocol, cast

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import SMTP, TLSSetupException

from gateway.edge.data import DataChecks, read_data
from gateway.edge.proxy import Peer, ProxyPolicy, ProxyRefused, client_address
from gateway.observe import metrics

log = logging.getLogger(__name__)
_MAIL_LOG = logging.getLogger("mail.log")  # aiosmtpd's own logger

_PARAM = re.compile(r"\s+([A-Za-z0-9-]+)(?:=(\S*))?")
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
NOTIFY_VALUES = {"SUCCESS", "FAILURE", "DELAY"}
# `<dot-atom@domain>`: the path of nearly every MAIL and RCPT (RFC 5321 4.1.2), with the
# blanks around it that the header parser takes too (a comment after it goes to that).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"[ \t]*<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*+(?!\()")

BAD_SENDER = "553 5.1.7 Sender address is not a valid mailbox"
SOURCE_ROUTE_SENDER = "553 5.1.7 Source routes are not accepted: give the sender's own address"
SOURCE_ROUTE_RECIPIENT = "553 5.1.3 Source routes are not accepted: give the recipient's address"
NO_AUTH = "502 5.5.1 AUTH is not offered: relaying is allowed by client network"
TLS_ACTIVE = "503 5.5.1 TLS is already active"
IDLE = "421 4.4.2 {host} Idle for too long, closing the connection"
INTERNAL = "451 4.3.0 Internal error, try again later"
TOO_BIG = "552 5.3.4 Message size exceeds the fixed maximum message size"
LINE_TOO_LONG = "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)"
READ_LIMIT = 1 << 16  # bytes the stream reader buffers before DATA is read on


class ConnectionGate(Protocol):
    """Admits or refuses new connections (gateway.edge.limits)."""

    def admit(self, client: str) -> str | None:
        """None to admit `client`, else the reply line to send before closing."""
        ...

    def release(self, client: str) -> None:
        """An admitted connection of `client` has ended."""
        ...


class Body(Protocol):
    """Where the text of a message goes as it arrives (gateway.spool.store.Incoming)."""

    async def write(self, data: bytes) -> None: ...

    def discard(self) -> None:
        """No 250 will be given: forget what was written."""
        ...


class BodyHandler(Protocol):
    def incoming(self) -> Body:
        """A new, empty body for the message about to be received."""
        ...


@dataclass
class Received:
    """The DATA just read: its body, and what the reader saw in it."""

    body: Body
    checks: DataChecks


class DsnSyntaxError(ValueError):
    """A DSN parameter that breaks RFC 3461."""


@dataclass
class DsnParams:
    """RFC 3461 parameters of the transaction in progress."""

    ret: str = ""
    envid: str = ""
    # address -> (NOTIFY, ORCPT)
    rcpt: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)


def take_params(arg: str, names: set[str]) -> tuple[str, dict[str, str]]:
    """Split the named ESMTP parameters (case-kept values) off a MAIL/RCPT argument."""
    head, sep, tail = arg.partition(">")
    if not sep:
        return arg, {}
    taken: dict[str, str] = {}
    kept = []
    for m in _PARAM.finditer(tail):
        name = m[1].upper()
        if name in names:
            if name in taken:
                raise DsnSyntaxError(f"{name} given twice")
            taken[name] = m[2] or ""
        else:
            kept.append(m[0])
    return head + sep + "".join(kept), taken


def check_notify(value: str) -> tuple[str, ...]:
    items = tuple(v.upper() for v in value.split(","))
    if items == ("NEVER",):
        return items
    if not items or not set(items) <= NOTIFY_VALUES:
        raise DsnSyntaxError("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY")
    return items


def check_xtext(name: str, value: str, limit: int = 500) -> str:
    if not value or len(value) > limit or not _XTEXT.fullmatch(value):
        raise DsnSyntaxError(f"{name} must be xtext")
    return value


def _source_route(arg: str, keyword: str) -> bool:
    """Whether a MAIL/RCPT argument's path is `<@host,...:mailbox>` (RFC 5321 4.1.2)."""
    return arg[len(keyword):].lstrip().startswith("<@")


class GatewaySMTP(SMTP):
    """SMTP with RFC 3461 parameters; the handler reads them from `self.dsn`."""

    # aiosmtpd sizes its stream reader by this and holds DATA lines to it; here DATA is
    # read in chunks of this size (edge/data.py keeps the 1001-octet line rule), and
    # command lines stay held to command_size_limit.
    line_length_limit = READ_LIMIT

    def __init__(self, handler: BodyHandler, *args, limits: ConnectionGate | None = None,
                 proxy: ProxyPolicy | None = None, **kwargs) -> None:
        self.dsn = DsnParams()
        self.received: Received | None = None
        self.pending_rcpt: tuple[tuple[str, ...], str] = ((), "")
        self.limits = limits
        self.client = ""  # the peer's address, once the connection is admitted
        self._refused = False
        self.proxy = proxy
        self.proxied_peer: Peer | None = None  # the client a PROXY header named
        self._awaiting_header = False
        self._proxy_refusal = ""
        self._idle_deadline = 0.0  # loop time past which the session is idle
        self._timer_at: float | None = None  # when the idle timer is set for, if it is
        self._answering = False  # the client waits for our reply to its DATA: not idle
        super().__init__(handler, *args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # not after STARTTLS
            peer = transport.get_extra_info("peername")
            if self.proxy is not None:
                # Decided per connection, before aiosmtpd starts reading: only a trusted
                # proxy is asked for a header; from anyone else a PROXY line is a command.
                self._proxy_timeout = self.proxy.header_timeout(peer)
                self._awaiting_header = self._proxy_timeout is not None
            # Behind a balancer the limits count the client its header names, not it.
            if not self._awaiting_header and not self._admit(peer, transport):
                self._refused = True  # aiosmtpd never saw it: nothing of its to undo
                return
        super().connection_made(transport)
        if self.proxied_peer is not None and self.session is not None:
            self.session.peer = self.proxied_peer  # the session after STARTTLS is a new one

    def _admit(self, peer: object, transport: asyncio.BaseTransport) -> bool:
        """Count the connection of `peer`; False (421 sent, closing) past the limits."""
        if self.limits is None:
            return True
        client = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        refusal = self.limits.admit(client)
        if refusal is not None:
            log.warning("refused connection from %s: %s", client, refusal)
            # uvloop's transports write without being asyncio.WriteTransport instances.
            cast(asyncio.WriteTransport, transport).write(refusal.encode("ascii") + b"\r\n")
            transport.close()
            return False
        self.client = client
        return True

    def proxied(self, data: ProxyData) -> bool:
        """A valid PROXY header: take the client it names as the peer; False closes."""
        assert self.session is not None and self.transport is not None
        self._awaiting_header = False
        try:
            client = client_address(data, self.session.peer)
        except ProxyRefused as e:
            self._proxy_refusal = str(e)
            return False
        self.proxied_peer = self.session.peer = client
        return self._admit(client, self.transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self.client and self.limits is not None:
            self.limits.release(self.client)
            self.client = ""
        if self._proxy_timeout is not None and self.proxied_peer is None and self.session:
            self._log_proxy_failure()
        super().connection_lost(error)

    def eof_received(self) -> bool:
        """The client's EOF ends the session: close the connection here, not in its task.

        aiosmtpd cancels the session's task and leaves the closing to it, but a task
        cancelled before its first step (uvloop delivers the EOF of a connect-and-close,
        a balancer's health check, that early) never runs: the connection would stay
        half-open and hold its place in the limits for good. False closes it once what
        is written has gone.
        """
        if not self._refused:
            super().eof_received()
        return False

    def _log_proxy_failure(self) -> None:
        """aiosmtpd closes a trusted proxy's connection without a word: say why."""
        assert self.session is not None
        data = self.session.proxy_data
        if data is None and self._reader.at_eof():
            # Hung up before sending a header: a balancer's plain TCP health check.
            log.debug("proxy %s closed before a PROXY header", self.session.peer)
            return
        why = self._proxy_refusal or (data.error if data is not None else "") or (
            f"no PROXY protocol header within {self._proxy_timeout:g} s")
        metrics.smtp_rejections.labels(reason="proxy_header").inc()
        log.warning("closed connection from proxy %s: %s", self.session.peer, why)

    def data_received(self, data: bytes) -> None:
        # Idle means no byte from the client, not one long DATA; a proxy's header has
        # its own, short, limit.
        self._reset_timeout(self._proxy_timeout if self._awaiting_header else None)
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's idle timer, moved without a new timer for every command and read.

        aiosmtpd cancels its timer and starts another each time; here the deadline moves
        and the one timer, when it fires before the deadline, waits for what is left.
        """
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._idle_deadline = deadline
        handle = self._timeout_handle
        if (handle is None or self._timer_at is None or deadline < self._timer_at
                or handle.cancelled()):
            if handle is not None:
                handle.cancel()
            self._arm_timer(deadline)

    def _arm_timer(self, when: float) -> None:
        self._timer_at = when
        self._timeout_handle = self.loop.call_at(when, self._idle_check)

    def _idle_check(self) -> None:
        if self._answering:
            # The client waits for us (a commit behind a stalled disk): a 421 now would
            # come after the message may be spooled, and its retry would be a duplicate.
            self._arm_timer(self.loop.time() + self._timeout_duration)
            return
        if self.loop.time() < self._idle_deadline:  # something came since it was set
            self._arm_timer(self._idle_deadline)
            return
        self._timer_at = None
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        if (self.transport is not None and not self.transport.is_closing()
                and not self._awaiting_header):
            cast(asyncio.WriteTransport, self.transport).write(
                IDLE.format(host=self.hostname).encode("ascii") + b"\r\n")
        super()._timeout_cb()

    async def push(self, status: str | bytes) -> None:
        """aiosmtpd's push, waiting for the client only when the reply could not be sent
        at once (its drain, two coroutines deep, would return at once anyway)."""
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        self._writer.write(status + b"\r\n")
        if _MAIL_LOG.isEnabledFor(logging.DEBUG):
            _MAIL_LOG.debug("%r << %r", self.session and self.session.peer, status)
        if self.transport is None or self.transport.get_write_buffer_size():
            await self._writer.drain()

    async def handle_exception(self, error: Exception) -> str:
        """A failed TLS handshake is one line in the log; anything else is a bug."""
        if isinstance(error, TLSSetupException):
            cause = error.__cause__
            log.info("TLS handshake with %s failed: %s", self.session and self.session.peer,
                     cause or "connection closed")
            return ""  # aiosmtpd closes the connection without sending it
        log.exception("SMTP session with %s failed", self.session and self.session.peer)
        return INTERNAL

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:
            await self.push(TLS_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push(NO_AUTH)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's path parser, with plain `<local@domain>` paths read by one regex.

        aiosmtpd runs the `email` header parser and defines a class on every call (about
        0.15 ms); anything but a plain path still goes to it.
        """
        m = _PLAIN_PATH.match(arg)
        if m is None:
            return super()._getaddr(arg)
        address = m[1]
        if self.local_part_limit and address.rfind("@") > self.local_part_limit:
            return None, None
        return address, arg[m.end():]

    def _set_rset_state(self) -> None:
        super()._set_rset_state()
        self.dsn = DsnParams()

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()
        self.dsn = DsnParams()
        self.received = None

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, with the text read in chunks into the handler's body."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body = self.event_handler.incoming()
        try:
            checks = await read_data(self._reader, body.write, self.data_size_limit)
        except asyncio.IncompleteReadError:  # the client hung up within DATA
            body.discard()
            if self.transport is not None:
                self.transport.close()
            return
        except BaseException:
            body.discard()
            raise
        if checks.refused:
            body.discard()
            self._set_post_data_state()
            await self.push(LINE_TOO_LONG if checks.too_long else TOO_BIG)
            return
        self.received = Received(body, checks)
        self._answering = True
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self._answering = False
            self._reset_timeout()  # the client's idle time starts at our answer
            body.discard()  # a hook that failed before its commit leaves no file behind
            self._set_post_data_state()
        await self.push(status)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg is not None and _source_route(arg, "FROM:"):
            await self.push(SOURCE_ROUTE_SENDER)
            return
        path = self._strip_command_keyword("FROM:", arg or "")
        if path and self._getaddr(path)[0] is None:  # aiosmtpd would say 5.1.3 (a recipient's)
            await self.push(BAD_SENDER)
            return
        if arg is not None and self.session is not None and self.session.extended_smtp:
            try:
                arg, params = take_params(arg, {"RET", "ENVID"})
                ret = params.get("RET", "").upper()
                if "RET" in params and ret not in ("FULL", "HDRS"):
                    raise DsnSyntaxError("RET must be FULL or HDRS")
                envid = check_xtext("ENVID", params["ENVID"], 100) if "ENVID" in params else ""
            except DsnSyntaxError as e:
                await self.push(f"501 5.5.4 {e}")
                return
            await super().smtp_MAIL(arg)
            if self.envelope is not None and self.envelope.mail_from is not None:
                self.dsn.ret, self.dsn.envid = ret, envid
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.pending_rcpt = ((), "")
        if arg is not None and _source_route(arg, "TO:"):
            await self.push(SOURCE_ROUTE_RECIPIENT)
            return
        if arg is not None and self.session is not None and self.session.extended_smtp:
            try:
                arg, params = take_params(arg, {"NOTIFY", "ORCPT"})
                notify = check_notify(params["NOTIFY"]) if "NOTIFY" in params else ()
                orcpt = params.get("ORCPT", "")
                if orcpt:
                    addr_type, sep, addr = orcpt.partition(";")
                    if not sep or not addr_type:
                        raise DsnSyntaxError("ORCPT must be addr-type;xtext")
                    check_xtext("ORCPT", addr)
            except DsnSyntaxError as e:
                await self.push(f"501 5.5.4 {e}")
                return
            self.pending_rcpt = (notify, orcpt)
        await super().smtp_RCPT(arg)
