"""The aiosmtpd handler: address checks at MAIL and RCPT, relay check at RCPT, and DATA
that does nothing but spool.

Hooks stay thin and never deliver (ARCHITECTURE rule 7): MAIL and RCPT addresses pass the
one address rule (`policy.address`: no percent hack or bang path, UTF-8 only with
SMTPUTF8, RFC 6531 3.3); DATA, which the protocol has read into the spool's body
(`incoming`), refuses bare CR or LF and NUL (SMTP smuggling, RFC 5321 2.3.8 and 4.5.2),
makes the message durable, answers 250 only after the fsync and then tells the
scheduler. A failed write answers 451 4.3.0 (452 4.3.1 when the disk is full), leaves
nothing half-written, and nothing is lost.

Clients in `relay_networks` may send anywhere; with `inbound.enabled` every other client
may send to internal recipients only (the gateway as MX, CONTRACT "Inbound"), and its
messages are spooled as `from_outside`.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session

from gateway import rawmail
from gateway.config import TagsConfig
from gateway.edge.protocol import BAD_SENDER, GatewaySMTP
from gateway.edge.proxy import in_networks
from gateway.model import Envelope, RecipientState
from gateway.observe import maillog, metrics
from gateway.policy.address import (
    InvalidAddress,
    NeedsUtf8,
    domain_matches,
    domain_of,
    normalise,
)
from gateway.policy.departments import Department
from gateway.policy.tags import read_tags, resolve_department
from gateway.spool.store import Incoming, Spool, SpoolError, new_id

log = logging.getLogger(__name__)

RELAY_DENIED = "554 5.7.1 Relaying denied: this client may not send through this gateway"
BAD_ADDRESS = "553 5.1.3 Recipient address is not a valid mailbox"
NEEDS_UTF8 = "553 5.6.7 A UTF-8 address needs SMTPUTF8 in MAIL FROM (RFC 6531)"
BARE_LINE_ENDING = "554 5.6.0 Message refused: bare CR or LF in the data (RFC 5321 2.3.8)"
NUL_IN_DATA = "554 5.6.0 Message refused: NUL in the data (RFC 5321 4.5.2)"
SPOOL_FAILED = "451 4.3.0 Message not accepted: the queue cannot be written, try again later"
SPOOL_FULL = "452 4.3.1 Message not accepted: insufficient system storage, try again later"


class Handler:
    """Receives messages for the gateway; one instance serves every listener."""

    def __init__(self, spool: Spool, relay_networks: Sequence[ipaddress._BaseNetwork],
                 tags: TagsConfig, on_accepted: Callable[[Envelope], None],
                 departments: Sequence[Department] = (), *, inbound: bool = False,
                 internal_domains: Sequence[str] = ()) -> None:
        self.spool = spool
        self.relay_networks = tuple(relay_networks)
        self.tags = tags
        self.on_accepted = on_accepted
        self.departments = tuple(departments)  # only to name the department in the log
        self.inbound = inbound
        self.internal_domains = tuple(internal_domains)

    def may_relay(self, peer: object) -> bool:
        return in_networks(peer, self.relay_networks)

    async def handle_PROXY(self, server: GatewaySMTP, session: Session, envelope: SmtpEnvelope,
                           data: ProxyData) -> bool:
        """A trusted proxy's valid header: go on as its client, or close (False)."""
        return server.proxied(data)

    async def handle_EHLO(self, server: GatewaySMTP, session: Session, envelope: SmtpEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        """Advertise DSN (RFC 3461) beside aiosmtpd's own extensions."""
        session.host_name = hostname
        offered = [r for r in responses[:-1] if not r[4:].upper().startswith("AUTH")]
        return [*offered, "250-DSN", responses[-1]]

    async def handle_MAIL(self, server: GatewaySMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, mail_options: list[str]) -> str:
        """The sender passes the recipients' address rule; `<>` stays allowed."""
        if address != "<>":
            try:
                address = normalise(address, utf8=envelope.smtp_utf8)
            except NeedsUtf8:
                metrics.smtp_rejections.labels(reason="needs_smtputf8").inc()
                return NEEDS_UTF8
            except InvalidAddress:
                metrics.smtp_rejections.labels(reason="bad_sender").inc()
                maillog.reject(client=_client(session), sender=address, recipient="",
                               reply=BAD_SENDER)
                return BAD_SENDER
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender ok"

    async def handle_RCPT(self, server: GatewaySMTP, session: Session,
                          envelope: SmtpEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        outside = not self.may_relay(session.peer)
        if outside and not self.inbound:
            return self._relay_denied(session, envelope, address)
        try:
            address = normalise(address, utf8=envelope.smtp_utf8)
        except NeedsUtf8:
            metrics.smtp_rejections.labels(reason="needs_smtputf8").inc()
            return self._refuse(session, envelope, address, NEEDS_UTF8)
        except InvalidAddress:
            metrics.smtp_rejections.labels(reason="bad_address").inc()
            return self._refuse(session, envelope, address, BAD_ADDRESS)
        if outside and not domain_matches(domain_of(address), self.internal_domains):
            return self._relay_denied(session, envelope, address)  # an MX, never open relay
        if address not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(address)
            server.dsn.rcpt[address] = server.pending_rcpt
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient ok"

    def _relay_denied(self, session: Session, envelope: SmtpEnvelope, address: str) -> str:
        metrics.smtp_rejections.labels(reason="relay_denied").inc()
        return self._refuse(session, envelope, address, RELAY_DENIED)

    def _refuse(self, session: Session, envelope: SmtpEnvelope, address: str,
                reply: str) -> str:
        maillog.reject(client=_client(session), sender=_sender(envelope),
                       recipient=address, reply=reply)
        return reply

    def incoming(self) -> Incoming:
        """The body a new message is received into: the spool's, under a new queue id."""
        return self.spool.incoming(new_id())

    async def handle_DATA(self, server: GatewaySMTP, session: Session,
                          envelope: SmtpEnvelope) -> str:
        assert server.received is not None
        body, checks = server.received.body, server.received.checks
        assert isinstance(body, Incoming)
        if checks.nul or checks.bare_line_ending:
            body.discard()
            reply = NUL_IN_DATA if checks.nul else BARE_LINE_ENDING
            metrics.smtp_rejections.labels(
                reason="nul" if checks.nul else "bare_line_ending").inc()
            maillog.reject(client=_client(session), sender=_sender(envelope),
                           recipient=",".join(envelope.rcpt_tos), reply=reply)
            return reply
        sender = _sender(envelope)
        queued = Envelope(
            id=body.queue_id,
            sender=sender,
            recipients=[
                RecipientState(address=a, notify=server.dsn.rcpt.get(a, ((), ""))[0],
                               orcpt=server.dsn.rcpt.get(a, ((), ""))[1])
                for a in envelope.rcpt_tos
            ],
            received=time.time(),
            client=_client(session),
            helo=session.host_name or "",
            ret=server.dsn.ret,
            envid=server.dsn.envid,
            smtputf8=envelope.smtp_utf8,
            from_outside=not self.may_relay(session.peer),
        )
        try:
            await self.spool.commit(queued, body)
        except SpoolError as e:
            log.error("spool write failed: %s", e)
            return SPOOL_FULL if e.full else SPOOL_FAILED
        try:
            self._report_received(queued, body.head, sender, checks.size)
        except Exception:  # durable now: it is delivered and answered 250 all the same
            log.exception("%s: queued, but the received line could not be written", queued.id)
        self.on_accepted(queued)
        return f"250 2.0.0 Ok: queued as {queued.id}"

    def _report_received(self, queued: Envelope, head: bytes, sender: str, size: int) -> None:
        """The metric and the mail log's received line (the pipeline reads the tags anew)."""
        fields, _ = rawmail.split(head)
        tagging = read_tags(fields, self.tags)
        tagged = tagging.tagged and not queued.from_outside  # outsiders never tag
        metrics.child(metrics.messages_received, "true" if tagged else "false").inc()
        department = (resolve_department(tagging, sender, self.departments)
                      if tagged else None)
        message_id = (rawmail.get(fields, "Message-ID") or "").strip()
        maillog.received(queued.id, client=queued.client, helo=queued.helo, sender=sender,
                         size=size, message_id=message_id, tagged=tagged,
                         department=department.id if department else "",
                         nrcpt=len(queued.recipients))


def _client(session: Session) -> str:
    return str(session.peer[0]) if isinstance(session.peer, tuple) else ""


def _sender(envelope: SmtpEnvelope) -> str:
    """MAIL FROM's address; "" for the null sender (aiosmtpd keeps it as "<>")."""
    return "" if envelope.mail_from in (None, "<>") else envelope.mail_from
