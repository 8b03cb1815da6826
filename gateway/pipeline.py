"""One delivery attempt of one message: classify, transform, deliver, and bounce what failed.

The scheduler calls `attempt` when recipients are due; this module decides for each of
them what may be sent where and records the outcome on the recipient's state. It never
retries by itself and never sends a tagged mail where the class is not safe: an unknown
class or an unexpected error defers (fail closed). Untagged mail passes the DLP scan
first (policy/dlp, once per message, its outcome kept in the spool record); one holding
a CPR number is handled by `dlp.cpr` (CONTRACT "Data-loss prevention").
Mail from outside takes the inbound road instead (gateway.inbound): decrypted,
verified and only ever to `routes.internal`, never tagged, never scanned.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import Any

from cryptography import x509

from gateway import rawmail
from gateway.bounce import owed
from gateway.bounce.dsn import Kind
from gateway.config import Config
from gateway.delivery import Rcpt, Result, Route, TlsPolicy, Transport, parse_route
from gateway.errors import Reply
from gateway.inbound.receive import Receiver
from gateway.inbound.replies import ReplyMap, ReplyMapUnavailable, Sent, reply_targets
from gateway.model import Decision, DlpOutcome, Envelope, RecipientClass, RecipientState, State
from gateway.observe import maillog, metrics
from gateway.policy.address import InvalidAddress, domain_matches, domain_of
from gateway.policy.classify import Classifier
from gateway.policy.departments import Department
from gateway.policy.dlp.cpr import contains_cpr
from gateway.policy.dlp.scan import ScanFailed, Scanner, describe_places, limits_from
from gateway.policy.routing import Routing
from gateway.policy.tags import read_tags, resolve_department
from gateway.spool.body import MessageData, Spooled, head_of, whole
from gateway.spool.store import Spool
from gateway.transform.headers import outgoing
from gateway.transform.mime import MimeLimitError
from gateway.transform.secure import protect

log = logging.getLogger(__name__)

INLINE_BYTES = 1 << 20  # smaller messages are handled on the loop, larger ones in a thread
PROTECT_ON_LOOP_BYTES = 16 * 1024  # smaller messages are signed and encrypted on the loop
OPPORTUNISTIC = TlsPolicy(level="may", ca_file=None, min_version="1.2")


@dataclass
class Policy:
    """What SIGHUP reloads: the classifier (SEPO list, directory), the departments, and
    for inbound mail the receiver (their keys, the validator) and the reply map."""

    classifier: Classifier
    departments: tuple[Department, ...]
    receiver: Receiver | None = None
    replies: ReplyMap | None = None


@dataclass
class Job:
    """One SMTP transaction (or file write): recipients sharing next hop and content."""

    cls: RecipientClass
    route: str
    tls: TlsPolicy
    recipients: list[RecipientState]
    data: MessageData = b""
    certificates: list[x509.Certificate] = field(default_factory=list)
    # A reply routed to the person who wrote the mail it answers (inbound): the addresses
    # a recipient's copy goes to instead of its own.
    targets: dict[str, list[str]] = field(default_factory=dict)

    def addresses(self, r: RecipientState) -> list[str]:
        return self.targets.get(r.address, [r.address])


@dataclass(frozen=True)
class Refusal:
    """Why a whole tagged message is bounced before any recipient is classified."""

    kind: str
    text: str


class Pipeline:
    """Carries out delivery attempts; the scheduler decides when."""

    def __init__(self, config: Config, spool: Spool, policy: Policy, transport: Transport,
                 enqueue: Callable[[Envelope], None],
                 clock: Callable[[], float] = time.time, scanner: Scanner | None = None) -> None:
        self.spool = spool
        self.enqueue = enqueue
        self.clock = clock
        self.scanner = scanner or Scanner(limits_from(config.dlp))
        self.reconfigure(config, policy, transport)

    def reconfigure(self, config: Config, policy: Policy, transport: Transport) -> None:
        """Use a new configuration from the next attempt on (SIGHUP)."""
        self.config = config
        self.policy = policy
        self.transport = transport
        self.routing = Routing(config.routes, config.organisation.internal_domains)
        self.tunnel_tls = tunnel_levels(config)
        # Untagged mail to DANE hosts is held to their TLSA records (Postfix's `dane`).
        self.plain_tls = (TlsPolicy(level="dane", min_version=config.sepo.min_tls)
                          if config.transport_security.dane else OPPORTUNISTIC)

    async def attempt(self, env: Envelope) -> None:
        """Try every due recipient of one message once and record what happened."""
        now = self.clock()
        due = [r for r in env.recipients if not r.state.final and r.next_attempt <= now]
        if not due:
            return
        try:
            await self._attempt(env, due, now)
        except Exception:
            # The scheduler defers what is not final. A bounce of this attempt was not
            # reported yet (that comes last, and never raises): it must not stay final.
            for r in due:
                if r.state == State.BOUNCED:
                    r.state, r.dsn_owed = State.QUEUED, ""
            raise

    async def _attempt(self, env: Envelope, due: list[RecipientState], now: float) -> None:
        # A large message comes with its body left in the spool file (spool/body.py): relayed
        # untagged, it is sent from there in chunks with a new header block.
        data = await self.spool.message(env.id)
        head = head_of(data)
        if env.from_outside:  # never tagged, never scanned (CONTRACT "Inbound")
            jobs = await self._inbound_jobs(env, due, await whole(data))
            await self._finish(env, due, head, jobs, now)
            return
        fields = rawmail.head_fields(head)
        tagging = read_tags(fields, self.config.tags)
        if tagging.tagged:  # S/MIME signs and encrypts the whole message
            data = head = await whole(data)
        stripped: MessageData
        if isinstance(data, Spooled):
            stripped = data.with_head(outgoing(data.head, self.config.tags))
        else:  # only the header is parsed; a thread hop costs more for ordinary mail
            stripped = (outgoing(data, self.config.tags) if len(data) < INLINE_BYTES
                        else await asyncio.to_thread(outgoing, data, self.config.tags))
        if not tagging.tagged:
            jobs = await self._untagged_jobs(env, due, data, stripped, fields, tagging.subject)
        else:
            assert isinstance(stripped, bytes)
            if tagging.doubt:
                log.warning("%s: handled as tagged: %s", env.id, tagging.doubt)
            policy = self.policy
            department = resolve_department(tagging, env.sender, policy.departments)
            refusal = self._refusal(department, env.sender, tagging.subject)
            if refusal is not None:
                for r in due:
                    r.cls = str(RecipientClass.UNSAFE)
                    self._bounce(env, r, "5.7.1", refusal.text, refusal.kind)
                jobs = []
            else:
                assert department is not None
                jobs = await self._secure_jobs(env, due, stripped, fields, department, policy)
        await self._finish(env, due, head, jobs, now)

    async def _finish(self, env: Envelope, due: list[RecipientState], head: bytes,
                      jobs: list[Job], now: float) -> None:
        """Deliver the jobs, then report and record what became of every due recipient.

        `head` is the message, or at least its header block: all a DSN quotes of it."""
        outcomes = await _each([self._deliver(env, job) for job in jobs])
        for job, outcome in zip(jobs, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                continue
            # Fail closed, one hop at a time: its recipients wait, the others' stand. (The
            # router made a hop's own errors, a spool read error among them, 451 already.)
            log.error("%s: delivery via %s failed unexpectedly; deferring", env.id,
                      job.route, exc_info=outcome)
            reply = Reply(451, "4.3.0", "internal error, will retry")
            for r in job.recipients:
                if not r.state.final:
                    self._defer(env, r, reply)
        self._age_checks(env)
        await self._report(env, head)
        for r in due:
            env.history.append({"time": round(now, 3), "address": r.address,
                                "state": str(r.state), "class": r.cls,
                                "detail": r.last_error or r.diagnostic})

    async def _untagged_jobs(self, env: Envelope, due: list[RecipientState],
                             data: MessageData, stripped: MessageData,
                             fields: list[rawmail.Field], subject: str) -> list[Job]:
        """Relayed unchanged, unless the DLP scan found a CPR number (CONTRACT table)."""
        try:
            outcome = await self._dlp(env, data)
        except ScanFailed as e:
            for r in due:
                r.cls = str(RecipientClass.PLAIN)
                self._defer(env, r, Reply(451, "4.3.0", f"{e}; will retry"))
            return []
        action = outcome.action if outcome else ""
        if action in ("", "warn"):
            return self._plain_jobs(due, stripped)
        assert outcome is not None
        internal_domains = self.config.organisation.internal_domains
        internal = [r for r in due if domain_matches(domain_of(r.address), internal_domains)]
        external = [r for r in due if r not in internal]
        jobs = self._plain_jobs(internal, stripped)
        department = next((d for d in self.policy.departments if d.is_default_for(env.sender)),
                          None)
        where = describe_places(outcome.found)
        refusal: Refusal | None
        if action == "block":
            refusal = Refusal("cpr_blocked", f"a CPR number was found in {where}; "
                                             "untagged mail with one is not sent outside")
        elif department is None:
            refusal = Refusal("cpr_no_department", f"a CPR number was found in {where}, and no "
                                                   "department sends secure mail for the sender")
        else:
            refusal = self._refusal(department, env.sender, subject)
        if refusal is not None:
            for r in external:
                r.cls = str(RecipientClass.UNSAFE)
                self._bounce(env, r, "5.7.1", refusal.text, refusal.kind)
            return jobs
        assert department is not None
        return jobs + await self._secure_jobs(env, external, await whole(stripped), fields,
                                              department, self.policy, cpr=True)

    async def _dlp(self, env: Envelope, data: MessageData) -> DlpOutcome | None:
        """The DLP outcome, decided at the first attempt and kept in the spool record."""
        if env.from_outside:
            return None  # mail from outside is never scanned (CONTRACT "Inbound")
        if env.dlp is not None:
            return env.dlp
        mode = self.config.dlp.cpr
        if mode == "off":
            env.dlp = DlpOutcome(mode)
            return env.dlp
        # A spooled message is read from its file in pieces, up to where its body ends.
        result = await self.scanner.scan(data)
        metrics.dlp_scan_seconds.observe(result.seconds)
        env.dlp = DlpOutcome(mode, result.places,
                             tuple(f"{g.reason}: {g.name or 'the message'} ({g.detail})"
                                   for g in result.gaps))
        for reason in dict.fromkeys(g.reason for g in result.gaps):
            metrics.dlp_incomplete.labels(reason=reason).inc()
        for finding in result.findings:
            metrics.dlp_findings.labels(where=finding.where, action=mode).inc()
        if result.found or result.gaps:
            maillog.dlp(env.id, mode=mode, findings=len(result.findings),
                        found=describe_places(result.places) if result.found else "",
                        incomplete="; ".join(env.dlp.gaps))
        return env.dlp

    def _refusal(self, department: Department | None, sender: str,
                 subject: str) -> Refusal | None:
        if department is None:
            return Refusal("no_department", "the mail is marked for secure sending, but no "
                                            "department could be found for it")
        if not department.allows(sender):
            return Refusal("sender_not_allowed", f"<{sender}> may not send secure mail through "
                                                 f"the department {department.id}")
        if contains_cpr(subject):
            return Refusal("cpr_in_subject", "the subject holds what looks like a CPR number, "
                                             "and the subject is never encrypted")
        return None

    def _plain_jobs(self, due: list[RecipientState], data: MessageData) -> list[Job]:
        groups: dict[tuple[str, str], Job] = {}
        for r in due:
            r.cls = str(RecipientClass.PLAIN)
            route = self.routing.route_for(domain_of(r.address))
            key = (route, _hop_domain(route, r.address))
            tls = self.plain_tls if route == "mx" else OPPORTUNISTIC
            groups.setdefault(key, Job(RecipientClass.PLAIN, route, tls, [], data))
            groups[key].recipients.append(r)
        return list(groups.values())

    async def _inbound_jobs(self, env: Envelope, due: list[RecipientState],
                            data: bytes) -> list[Job]:
        """Mail from outside: decrypted, verified and labelled, then to `routes.internal`."""
        policy = self.policy
        receiver = policy.receiver or Receiver((), None, None, decrypt=False,
                                               tag_header=self.config.tags.header)
        received = await receiver.receive(data, env.id)
        if not any(r.attempts for r in env.recipients):  # each message counts once
            metrics.inbound_messages.labels(result=received.result,
                                            signature=received.signature).inc()
        internal = self.config.organisation.internal_domains
        job = Job(RecipientClass.PLAIN, self.config.routes.internal, OPPORTUNISTIC, [],
                  received.data)
        for r in due:
            r.cls = str(RecipientClass.PLAIN)
            if not domain_matches(domain_of(r.address), internal):  # internal_domains changed
                self._bounce(env, r, "5.7.1", "mail from outside is delivered to internal "
                             "recipients only", "not_internal")
                continue
            try:
                targets = await reply_targets(received, r.address, policy.departments,
                                              policy.replies, internal)
            except ReplyMapUnavailable as e:
                self._defer(env, r, Reply(451, "4.3.0", f"reply routing unavailable: {e}"))
                continue
            if targets != [r.address]:
                maillog.routed(env.id, r.address, targets=targets)
                job.targets[r.address] = targets
            job.recipients.append(r)
        return [job] if job.recipients else []

    async def _secure_jobs(self, env: Envelope, due: list[RecipientState], stripped: bytes,
                           fields: list[rawmail.Field], department: Department,
                           policy: Policy, cpr: bool = False) -> list[Job]:
        """Tagged mail, or untagged mail holding a CPR number (`cpr`)."""
        message_id = rawmail.get(fields, "Message-ID")
        if department.config.replies == "department" and not message_id:
            # Replies are routed by the Message-ID they answer: give the mail one.
            message_id = f"<{env.id}@{self.config.smtp.hostname}>"
            stripped = f"Message-ID: {message_id}\r\n".encode("ascii") + stripped
        # Nearly all mail has one recipient: classified without a task (a turn of the loop).
        decisions = ([await self._classify(policy, due[0].address)] if len(due) == 1 else
                     await asyncio.gather(*(self._classify(policy, r.address) for r in due)))
        visible: set[str] | None = None  # To and Cc, parsed only once an S/MIME copy needs it
        jobs: dict[tuple[str, ...], Job] = {}
        for r, decision in zip(due, decisions, strict=True):
            r.cls = str(decision.cls)
            maillog.classified(env.id, r.address, r.cls, decision.reason)
            if decision.cls == RecipientClass.UNSAFE:
                self._bounce(env, r, "5.7.1", decision.reason, "cpr_found" if cpr else "unsafe")
                continue
            if decision.cls == RecipientClass.UNKNOWN:
                self._defer(env, r, Reply(451, "4.4.3", decision.reason))
                continue
            route = (self.config.routes.internal if decision.cls == RecipientClass.INTERNAL
                     else self.routing.route_for(domain_of(r.address)))
            tls = (self.tunnel_tls[decision.mechanism or "sepo"]
                   if decision.cls == RecipientClass.TUNNEL else OPPORTUNISTIC)
            # Bcc recipients of S/MIME mail get a copy encrypted for them alone.
            bcc = False
            if decision.cls == RecipientClass.SMIME:
                visible = _visible_recipients(fields) if visible is None else visible
                bcc = r.address.lower() not in visible
            share = r.address if bcc else ""
            key = (str(decision.cls), route, _hop_domain(route, r.address), share, tls.level)
            job = jobs.setdefault(key, Job(decision.cls, route, tls, [], stripped))
            job.recipients.append(r)
            if decision.certificate_der:
                job.certificates.append(x509.load_der_x509_certificate(decision.certificate_der))
        ready = []
        for job in jobs.values():
            if job.cls == RecipientClass.SMIME:
                try:
                    job.data = await _protected(stripped, department, job.certificates)
                except MimeLimitError as e:  # it never will be: bounce now, not at max_age
                    for r in job.recipients:
                        self._bounce(env, r, "5.6.0", str(e), "structure")
                    continue
                except Exception as e:  # a bug or bad input must never send it unprotected
                    log.exception("%s: S/MIME protection failed", env.id)
                    for r in job.recipients:
                        self._defer(env, r, Reply(451, "4.7.0",
                                                  f"could not sign and encrypt: {e}"))
                    continue
            ready.append(job)
        if message_id and department.config.replies == "department" and any(
                job.cls == RecipientClass.SMIME for job in ready):
            await self._remember(env, message_id, department, policy)
        return ready

    async def _remember(self, env: Envelope, message_id: str, department: Department,
                        policy: Policy) -> None:
        """Note who sent this secure mail, so the partner's encrypted reply finds them."""
        if policy.replies is None:
            return
        try:
            await policy.replies.remember(message_id, Sent(env.sender, department.id,
                                                           self.clock()))
        except ReplyMapUnavailable as e:
            # The mail matters more than the routing of its reply, which then reaches
            # the department mailbox.
            log.error("%s: cannot remember %s for reply routing: %s", env.id, message_id, e)

    async def _classify(self, policy: Policy, address: str) -> Decision:
        try:
            return await policy.classifier.classify(address)
        except InvalidAddress as e:
            return Decision(address, RecipientClass.UNSAFE, str(e))

    async def _deliver(self, env: Envelope, job: Job) -> None:
        started = time.perf_counter()
        route: Route = _route(job.route)
        label = "plain" if job.cls == RecipientClass.PLAIN else str(job.cls)
        # One RCPT per address, though a routed reply and a direct copy may share one.
        rcpts = list({a: Rcpt(a, r.notify, r.orcpt)
                      for r in job.recipients for a in job.addresses(r)}.values())
        result = await self.transport.deliver(
            route, domain_of(job.recipients[0].address), env.sender, rcpts, job.data, job.tls,
            queue_id=env.id, ret=env.ret, envid=env.envid, smtputf8=env.smtputf8)
        metrics.child(metrics.delivery_seconds, label).observe(time.perf_counter() - started)
        if result.tls_failure:
            metrics.child(metrics.tls_failures, label).inc()
        for r in job.recipients:
            reply = (result.replies.get(job.addresses(r)[0])
                     or Reply(451, "4.3.0", "no reply recorded"))
            if reply.code < 300:
                r.state, r.last_error, r.status = State.DELIVERED, "", "2.0.0"
                r.attempts += 1
                r.diagnostic = _diagnostic(reply)
                metrics.child(metrics.recipients, label, "delivered").inc()
                self._log("delivered", env, r, reply, result)
                if r.address not in result.dsn_relayed:
                    # RFC 3461 6.2: a next hop without DSN cannot confirm; say so ourselves.
                    owed.owe(r, "delivered" if route.kind == "file" else "relayed")
            elif reply.permanent:
                kind = _KIND_BY_STATUS.get(reply.status, "rejected")
                self._bounce(env, r, reply.status, str(reply), kind, hop=result, reply=reply)
            else:
                self._defer(env, r, reply, hop=result)

    def _defer(self, env: Envelope, r: RecipientState, reply: Reply,
               hop: Result | None = None) -> None:
        """Try again later; `hop` is the delivery result when a next hop gave `reply`."""
        r.state, r.last_error, r.status = State.DEFERRED, str(reply), reply.status
        r.attempts += 1
        label = r.cls or "plain"
        metrics.child(metrics.recipients, label, "deferred").inc()
        self._log("deferred", env, r, reply, hop)

    def _bounce(self, env: Envelope, r: RecipientState, status: str, reason: str, kind: Kind,
                hop: Result | None = None, reply: Reply | None = None) -> None:
        """Final failure: our `reason`, or the `reply` of the next hop in `hop`; its DSN
        is owed (`_report`)."""
        r.state, r.status, r.last_error = State.BOUNCED, status, reason
        r.attempts += 1
        r.diagnostic = _diagnostic(reply) if reply else f"x-send-sikkert; {reason}"
        metrics.child(metrics.recipients, r.cls or "plain", "bounced").inc()
        self._log("bounced", env, r, reply or Reply(550, status, reason), hop)
        owed.owe(r, kind)

    def _log(self, event: maillog.Outcome, env: Envelope, r: RecipientState, reply: Reply,
             hop: Result | None) -> None:
        """One line for one recipient's outcome: the next hop's reply, or our reason."""
        cls, delay = r.cls or "plain", self.clock() - env.received
        if hop is None:
            maillog.outcome(event, env.id, r.address, cls=cls, status=reply.status,
                            delay=delay, reason=reply.text)
        else:
            maillog.outcome(event, env.id, r.address, cls=cls, status=reply.status,
                            delay=delay, relay=hop.peer, tls_version=hop.tls_version,
                            tls_cipher=hop.tls_cipher, reply=str(reply))

    def _age_checks(self, env: Envelope) -> None:
        """Deferred too long: one delayed DSN at delay_warning, a failed DSN at max_age."""
        age = self.clock() - env.received
        queue = self.config.queue
        for r in env.recipients:
            if r.state != State.DEFERRED:
                continue
            if age >= queue.max_age:
                status = r.status if r.status.startswith("4.") else "4.4.7"
                reason = (f"could not be delivered in {queue.max_age:.0f} s; "
                          f"last error: {r.last_error}")
                self._bounce(env, r, "5" + status[1:], reason, "expired")
            elif age >= queue.delay_warning and not r.delay_warned:
                r.delay_warned = True
                owed.owe(r, "delayed")

    async def _report(self, env: Envelope, head: bytes) -> None:
        """Tell the sender what it asked to hear (RFC 3461 NOTIFY), one DSN per kind of news.

        The outcomes go to disk first (bounce/owed.py): a crash before the DSN is spooled
        leaves it owed, for the next start; never a bounce retried whose sender was told.
        A message with no news (nearly all) is written once, by the scheduler, as ever.
        """
        if not owed.owes_dsn(env):
            return
        try:
            await self.spool.update(env)
        except Exception as e:  # never tell what is not on record
            log.error("%s: cannot record the outcome its DSN tells of: %s", env.id, e)
            self._unreported([r for r in env.recipients if r.dsn_owed])
            return
        dsns, unpaid = await owed.pay(self.spool, self.config, env, head)
        for dsn in dsns:
            self.enqueue(dsn)
        self._unreported(unpaid)

    def _unreported(self, untold: list[RecipientState]) -> None:
        """A failure the sender was not told of is not final: try it again later."""
        for r in untold:
            action, r.dsn_owed = owed.action_of(r.dsn_owed), ""
            if action == "failed":
                r.state, r.last_error = State.DEFERRED, "the bounce could not be queued"
            elif action == "delayed":
                r.delay_warned = False


async def _protected(message: bytes, department: Department,
                     certificates: list[x509.Certificate]) -> bytes:
    """`protect`, on the loop for a small message (under 1 ms at 16 KiB), else in a thread.

    A thread would free the loop only while the RSA signature runs (the rest holds the
    interpreter lock), and the hop there and back, with the lock passed between the two
    threads, costs a small message's worker about as much CPU as that signature.
    """
    if len(message) < PROTECT_ON_LOOP_BYTES:
        return protect(message, department, certificates)
    return await asyncio.to_thread(protect, message, department, certificates)


async def _each(calls: list[Coroutine[Any, Any, None]]) -> list[BaseException | None]:
    """`asyncio.gather(*calls, return_exceptions=True)`, without a task for a lone call:
    most messages have one next hop, and a task costs a turn of the loop."""
    if len(calls) != 1:
        return await asyncio.gather(*calls, return_exceptions=True)
    try:
        await calls[0]
    except asyncio.CancelledError as e:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # the attempt itself is cancelled
            raise
        return [e]
    except Exception as e:
        return [e]
    return [None]


# Routes come from the configuration: a few strings, parsed once each.
_route = functools.lru_cache(maxsize=64)(parse_route)


def tunnel_levels(config: Config) -> dict[str, TlsPolicy]:
    """The TLS level for `tunnel` recipients, by who vouched for them."""
    min_tls = config.sepo.min_tls
    return {
        "sepo": TlsPolicy(level="verify", ca_file=config.sepo.ca_file, min_version=min_tls),
        "dane": TlsPolicy(level="dane-only", min_version=min_tls),
        "mta_sts": TlsPolicy(level="mta-sts", ca_file=config.transport_security.ca_file,
                             min_version=min_tls),
    }


# Our own permanent replies that the sender gets a text of their own for.
_KIND_BY_STATUS: dict[str, Kind] = {"5.6.7": "smtputf8", "5.6.3": "conversion"}


def _diagnostic(reply: Reply) -> str:
    """RFC 3464 2.3.6: `smtp;` only for what an SMTP server said, ours are ours."""
    return f"smtp; {reply}" if reply.remote else f"x-send-sikkert; {reply}"


def _hop_domain(route: str, address: str) -> str:
    """With `mx` the next hop depends on the recipient's domain; other routes are one hop."""
    return domain_of(address) if route == "mx" else ""


def _visible_recipients(fields: list[rawmail.Field]) -> set[str]:
    """Addresses named in To and Cc; every other envelope recipient is a Bcc."""
    values = [f.value for f in fields if f.name.lower() in ("to", "cc")]
    return {addr.lower() for _, addr in getaddresses(values) if addr}
