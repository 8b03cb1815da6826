"""The pipeline never finishes a bounce the sender was not told of, sends each tunnel
recipient with the TLS level of whoever vouched for it, signs and encrypts small mail on
the loop and larger mail in a thread, and keeps mail from outside inside the house."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from functools import cached_property
from pathlib import Path

import pytest

from gateway.config import load
from gateway.delivery import Result, TlsPolicy
from gateway.directory.files import FilesSource
from gateway.directory.service import CertificateDirectory
from gateway.directory.validate import RecipientValidator
from gateway.errors import Reply
from gateway.inbound.receive import DECRYPTED, Inbound, Receiver
from gateway.inbound.replies import FileReplyMap, ReplyMapUnavailable
from gateway.model import DlpOutcome, Envelope, RecipientState, State, TransportCheck
from gateway.pipeline import PROTECT_ON_LOOP_BYTES, Pipeline, Policy
from gateway.policy.classify import Classifier
from gateway.policy.departments import Department
from gateway.policy.sepo import SepoList
from gateway.spool.store import Spool, SpoolError, new_id
from gateway.transform.smime import Signer
from tests.support.pki import CA

DEMO = Path(__file__).parents[2] / "policies" / "gateway.toml"
MESSAGE = b"From: a@brondby.dk\r\nTo: x@hotmail.dk\r\nSubject: s\r\n\r\nhemmelig\r\n"


class Refusing:
    """A next hop (our Transport seam) that refuses every recipient for good."""

    async def deliver(self, route, domain, sender, rcpts, data, tls, **kw) -> Result:
        return Result({r.address: Reply(550, "5.1.1", "no such user") for r in rcpts})


class FullSpool(Spool):
    """A spool that cannot take new messages while `full` (a full disk)."""

    full = True

    async def put(self, envelope: Envelope, data: bytes) -> None:
        if self.full and envelope.sender == "":
            raise SpoolError("No space left on device")
        await super().put(envelope, data)


async def test_a_bounce_that_cannot_be_queued_is_retried(tmp_path):
    config = load(DEMO)
    spool = FullSpool(tmp_path)
    spool.prepare()
    env = Envelope(id=new_id(), sender="a@brondby.dk", recipients=[RecipientState("x@hotmail.dk")],
                   received=time.time())
    await spool.put(env, MESSAGE)
    queued: list[Envelope] = []
    policy = Policy(Classifier(("brondby.dk",), SepoList(frozenset(), tmp_path), None), ())
    pipeline = Pipeline(config, spool, policy, Refusing(), queued.append)

    await pipeline.attempt(env)
    assert env.recipients[0].state == State.DEFERRED  # not final: nobody was told yet
    assert queued == []

    spool.full = False
    await pipeline.attempt(env)
    assert env.recipients[0].state == State.BOUNCED
    [dsn] = queued
    assert dsn.sender == "" and [r.address for r in dsn.recipients] == ["a@brondby.dk"]
    assert b"hemmelig" not in await spool.body(dsn.id)


class BrokenDsnSpool(Spool):
    """A spool on which building or writing a DSN fails with an error nobody foresaw."""

    async def put(self, envelope: Envelope, data: bytes) -> None:
        if envelope.sender == "":
            raise RuntimeError("a bug in the DSN's making")
        await super().put(envelope, data)


async def test_a_bounce_whose_dsn_fails_unexpectedly_is_not_final(tmp_path):
    # Final and untold, the scheduler would drop the message: the 250 would be lost.
    config = load(DEMO)
    spool = BrokenDsnSpool(tmp_path)
    spool.prepare()
    env = Envelope(id=new_id(), sender="a@brondby.dk", recipients=[RecipientState("x@hotmail.dk")],
                   received=time.time())
    await spool.put(env, MESSAGE)
    policy = Policy(Classifier(("brondby.dk",), SepoList(frozenset(), tmp_path), None), ())
    await Pipeline(config, spool, policy, Refusing(), lambda dsn: None).attempt(env)
    assert env.recipients[0].state == State.DEFERRED
    assert not env.done


class HalfBroken:
    """Two next hops: one whose delivery code fails with an error nobody foresaw (a DANE
    lookup's bug, say), one that takes a moment and then refuses for good."""

    async def deliver(self, route, domain, sender, rcpts, data, tls, **kw) -> Result:
        if route.port == 2601:
            raise RuntimeError("a bug in this hop's delivery")
        await asyncio.sleep(0.05)
        return Result({r.address: Reply(550, "5.1.1", "no such user") for r in rcpts})


async def test_one_hop_failing_unexpectedly_defers_its_recipients_only(tmp_path):
    # The others' outcomes must be recorded and reported, not left running after the
    # attempt was given up (a bounce then set on nobody's record, its DSN never sent).
    demo = load(DEMO)
    config = demo.model_copy(update={"routes": demo.routes.model_copy(update={
        "transport": {"a.dk": "smtp://127.0.0.1:2601", "b.dk": "smtp://127.0.0.1:2602"}})})
    spool = Spool(tmp_path)
    spool.prepare()
    env = Envelope(id=new_id(), sender="a@brondby.dk", received=time.time(),
                   recipients=[RecipientState("x@a.dk"), RecipientState("y@b.dk")])
    await spool.put(env, MESSAGE)
    queued: list[Envelope] = []
    policy = Policy(Classifier(("brondby.dk",), SepoList(frozenset(), tmp_path), None), ())
    await Pipeline(config, spool, policy, HalfBroken(), queued.append).attempt(env)
    assert [r.state for r in env.recipients] == [State.DEFERRED, State.BOUNCED]
    assert env.recipients[0].last_error.startswith("451 4.3.0")
    assert len(queued) == 1  # the DSN for y@b.dk


class Failing:
    """One next hop whose delivery ends in an error, or in a cancellation of its own (a
    session the connection cache closed under it), not of the attempt."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def deliver(self, route, domain, sender, rcpts, data, tls, **kw) -> Result:
        await asyncio.sleep(0)
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("a bug in this hop's delivery"),
                                   asyncio.CancelledError()])
async def test_the_only_hop_failing_unexpectedly_defers(tmp_path, error):
    spool = Spool(tmp_path)
    spool.prepare()
    env = Envelope(id=new_id(), sender="a@brondby.dk", received=time.time(),
                   recipients=[RecipientState("x@a.dk"), RecipientState("y@a.dk")])
    await spool.put(env, MESSAGE)
    policy = Policy(Classifier(("brondby.dk",), SepoList(frozenset(), tmp_path), None), ())
    await Pipeline(load(DEMO), spool, policy, Failing(error), lambda dsn: None).attempt(env)
    assert [r.state for r in env.recipients] == [State.DEFERRED, State.DEFERRED]
    assert env.recipients[0].last_error.startswith("451 4.3.0")


class Stuck:
    """A next hop that never answers."""

    async def deliver(self, route, domain, sender, rcpts, data, tls, **kw) -> Result:
        await asyncio.sleep(30)
        raise AssertionError("not cancelled")


async def test_a_cancelled_attempt_stays_cancelled(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    env = Envelope(id=new_id(), sender="a@brondby.dk", received=time.time(),
                   recipients=[RecipientState("x@a.dk")])
    await spool.put(env, MESSAGE)
    policy = Policy(Classifier(("brondby.dk",), SepoList(frozenset(), tmp_path), None), ())
    attempt = asyncio.create_task(
        Pipeline(load(DEMO), spool, policy, Stuck(), lambda dsn: None).attempt(env))
    await asyncio.sleep(0.1)
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt


class Recording:
    """A next hop (our Transport seam) that accepts everything, noting the TLS level and
    what it was given."""

    def __init__(self) -> None:
        self.levels: dict[str, TlsPolicy] = {}
        self.sent: list[tuple[str, list[str], bytes]] = []

    async def deliver(self, route, domain, sender, rcpts, data, tls, **kw) -> Result:
        self.sent.append((str(route), [r.address for r in rcpts], data))
        for r in rcpts:
            self.levels[r.address] = tls
        return Result({r.address: Reply(250, "2.0.0", "ok") for r in rcpts})


class Vouching:
    """DANE and MTA-STS (the classifier's seam): dane.dk by DANE, sts.dk by MTA-STS."""

    async def check(self, domain: str) -> TransportCheck:
        mechanism = {"dane.dk": "dane", "sts.dk": "mta_sts"}.get(domain)
        if mechanism is None:
            return TransportCheck("insecure", "", "neither")
        return TransportCheck("secure", mechanism, f"{mechanism} vouches")  # type: ignore[arg-type]


TAGGED = (b"From: a@brondby.dk\r\nTo: x@dane.dk\r\nSubject: aeldreomsorg%% s\r\n\r\n"
          b"hemmelig\r\n")


async def test_each_tunnel_goes_with_the_tls_level_of_who_vouched(tmp_path):
    demo = load(DEMO)
    ca = tmp_path / "ca.pem"
    config = demo.model_copy(update={
        "routes": demo.routes.model_copy(update={
            "default": "mx", "transport": {"relay.dk": "smtp://127.0.0.1:2600"}}),
        "transport_security": demo.transport_security.model_copy(
            update={"dane": True, "mta_sts": True, "ca_file": ca})})
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    sepo = SepoList(frozenset({"ast.dk"}), tmp_path)
    classifier = Classifier(("brondby.dk",), sepo, None, Vouching())
    transport = Recording()
    # Tunnel recipients need no signing identity, only the department's configuration.
    department = Department(config.departments[0], None, (), None)  # type: ignore[arg-type]
    pipeline = Pipeline(config, spool, Policy(classifier, (department,)), transport,
                        lambda env: None)
    tagged = ["x@dane.dk", "y@sts.dk", "z@ast.dk"]
    plain = ["p@dane.dk", "q@relay.dk"]
    for recipients, data in ((tagged, TAGGED), (plain, MESSAGE)):
        env = Envelope(id=new_id(), sender="a@brondby.dk", received=time.time(),
                       recipients=[RecipientState(a) for a in recipients])
        await spool.put(env, data)
        await pipeline.attempt(env)
    levels = {a: (t.level, t.ca_file) for a, t in transport.levels.items()}
    assert levels == {"x@dane.dk": ("dane-only", None), "y@sts.dk": ("mta-sts", ca),
                      "z@ast.dk": ("verify", None), "p@dane.dk": ("dane", None),
                      "q@relay.dk": ("may", None)}


class NotingSigner(Signer):
    """Signs as a department does, noting the thread each message is signed in."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.threads: list[threading.Thread] = []

    def sign(self, entity, now=None) -> bytes:
        self.threads.append(threading.current_thread())
        return super().sign(entity, now)


class NotingDepartment(Department):
    @cached_property
    def signer(self) -> Signer:
        return NotingSigner(self.certificate, self.key, self.chain)


def openssl_cms(*args: str | Path, data: bytes) -> bytes:
    done = subprocess.run(["openssl", "cms", *map(str, args)], input=data, capture_output=True,
                          check=True)
    return done.stdout


async def test_small_mail_is_signed_on_the_loop_larger_mail_in_a_thread(tmp_path):
    config = load(DEMO)
    ca = CA()
    ole, signing = ca.issue("olelsen@dhl.dk"), ca.issue("aeldreomsorg@brondby.dk")
    (tmp_path / "directory").mkdir()
    (tmp_path / "directory" / "ole.pem").write_bytes(ole.pem)
    ole.write(tmp_path / "ole.pem", tmp_path / "ole.key", with_chain=False)
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    directory = CertificateDirectory(FilesSource(tmp_path / "directory"),
                                     RecipientValidator([ca.cert]), "files")
    department = NotingDepartment(config.departments[0], signing.cert, (), signing.key)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    transport = Recording()
    policy = Policy(Classifier(("brondby.dk",), SepoList(frozenset(), tmp_path), directory),
                    (department,))
    pipeline = Pipeline(config, spool, policy, transport, lambda env: None)
    bodies = [b"lille\r\n", b"stor linje\r\n" * (PROTECT_ON_LOOP_BYTES // 12 + 1)]
    try:
        for body in bodies:
            env = Envelope(id=new_id(), sender="a@brondby.dk", received=time.time(),
                           recipients=[RecipientState("olelsen@dhl.dk")])
            await spool.put(env, b"From: a@brondby.dk\r\nTo: olelsen@dhl.dk\r\n"
                                 b"Subject: aeldreomsorg%% s\r\n\r\n" + body)
            await pipeline.attempt(env)
            assert env.recipients[0].state == State.DELIVERED
    finally:
        await directory.close()
    loop_thread = threading.current_thread()
    small, large = department.signer.threads
    assert small is loop_thread and large is not loop_thread
    for body, (_, _, data) in zip(bodies, transport.sent, strict=True):
        signed = openssl_cms("-decrypt", "-recip", tmp_path / "ole.pem",
                             "-inkey", tmp_path / "ole.key", data=data)
        assert body in openssl_cms("-verify", "-CAfile", tmp_path / "ca.pem", data=signed)


CPR_MESSAGE = (b"From: a@brondby.dk\r\nTo: x@hotmail.dk\r\nSubject: s\r\n\r\n"
               b"Din mor, cpr. 220910-1230, har skinnebenssaar\r\n")


async def _one_attempt(tmp_path, env: Envelope, data: bytes) -> tuple[Recording, list]:
    spool = Spool(tmp_path)
    spool.prepare()
    await spool.put(env, data)
    queued: list[Envelope] = []
    transport = Recording()
    policy = Policy(Classifier(("brondby.dk",), SepoList(frozenset(), tmp_path), None), ())
    await Pipeline(load(DEMO), spool, policy, transport, queued.append).attempt(env)
    return transport, queued


async def test_mail_from_outside_is_never_scanned(tmp_path):
    env = Envelope(id=new_id(), sender="ole@hotmail.dk",
                   recipients=[RecipientState("x@brondby.dk")], received=time.time(),
                   from_outside=True)
    transport, queued = await _one_attempt(tmp_path, env, CPR_MESSAGE)
    assert env.dlp is None and queued == []
    assert set(transport.levels) == {"x@brondby.dk"}  # delivered unchanged


async def test_the_kept_decision_is_used_not_a_new_scan(tmp_path):
    # Decided at an earlier attempt (when the message still read as holding a number):
    env = Envelope(id=new_id(), sender="a@brondby.dk",
                   recipients=[RecipientState("x@hotmail.dk")], received=time.time(),
                   dlp=DlpOutcome("block", (("body", ""),)))
    transport, queued = await _one_attempt(tmp_path, env, MESSAGE)  # no number in it now
    assert transport.levels == {} and env.recipients[0].state == State.BOUNCED
    assert len(queued) == 1


async def test_the_first_attempt_decides_and_records(tmp_path):
    env = Envelope(id=new_id(), sender="a@brondby.dk",
                   recipients=[RecipientState("x@hotmail.dk")], received=time.time())
    transport, queued = await _one_attempt(tmp_path, env, CPR_MESSAGE)
    assert env.dlp == DlpOutcome("secure", (("body", ""),))
    assert transport.levels == {} and len(queued) == 1  # no department in this policy: DSN
    assert Envelope.from_json(env.to_json()).dlp == env.dlp
    old = env.to_json()
    del old["dlp"]  # a record written before the field existed: scanned when next due
    assert Envelope.from_json(old).dlp is None


class BrokenReplies(FileReplyMap):
    """A reply map whose storage is gone."""

    def __init__(self) -> None:
        pass

    async def find(self, message_ids):
        raise ReplyMapUnavailable("database unreachable")


async def test_mail_from_outside_goes_to_internal_recipients_only(tmp_path):
    config = load(DEMO)
    spool = Spool(tmp_path)
    spool.prepare()
    env = Envelope(id=new_id(), sender="ole@partner.dk", from_outside=True,
                   recipients=[RecipientState("lela@brondby.dk"), RecipientState("x@hotmail.dk")],
                   received=time.time())
    await spool.put(env, b"X-Send-Sikkert: yes\r\nSubject: s\r\n\r\nhej\r\n")
    queued: list[Envelope] = []
    transport = Recording()
    policy = Policy(Classifier(("brondby.dk",), SepoList(frozenset(), tmp_path), None), ())
    await Pipeline(config, spool, policy, transport, queued.append).attempt(env)
    # Accepted for x@hotmail.dk before internal_domains changed: never relayed out.
    assert [r.state for r in env.recipients] == [State.DELIVERED, State.BOUNCED]
    assert env.recipients[1].status == "5.7.1"
    [(route, rcpts, data)] = transport.sent
    assert route == config.routes.internal and rcpts == ["lela@brondby.dk"]
    assert data == b"Subject: s\r\n\r\nhej\r\n"  # never tagged: the tag header is gone


def replying_policy(config, tmp_path, replies: FileReplyMap) -> Policy:
    """A department with replies="department" and `replies` as its reply map; every
    message from outside decrypts to a reply to <a@brondby.dk>."""
    decrypted = Inbound(b"Subject: s\r\n\r\nhej\r\n", DECRYPTED, replied_to=("<a@brondby.dk>",))

    class Decrypting(Receiver):
        async def receive(self, data: bytes, queue_id: str = "") -> Inbound:
            return decrypted

    identity = CA("Pipeline test CA").issue("aeldreomsorg@brondby.dk")
    department = Department(config.departments[0].model_copy(update={"replies": "department"}),
                            identity.cert, (), identity.key)
    return Policy(Classifier(("brondby.dk",), SepoList(frozenset(), tmp_path), None),
                  (department,), Decrypting((), None, None, decrypt=True, tag_header="x"),
                  replies)


async def test_a_reply_map_that_cannot_answer_defers_the_reply(tmp_path):
    config = load(DEMO)
    spool = Spool(tmp_path)
    spool.prepare()
    env = Envelope(id=new_id(), sender="ole@partner.dk", from_outside=True,
                   recipients=[RecipientState("aeldreomsorg@brondby.dk")], received=time.time())
    await spool.put(env, b"Subject: s\r\nIn-Reply-To: <a@brondby.dk>\r\n\r\nhej\r\n")
    policy = replying_policy(config, tmp_path, BrokenReplies())
    transport = Recording()
    await Pipeline(config, spool, policy, transport, [].append).attempt(env)
    assert env.recipients[0].state == State.DEFERRED and transport.sent == []
    assert "reply routing unavailable: database unreachable" in env.recipients[0].last_error


class BuggyReplies(BrokenReplies):
    """A reply map with a bug: it fails with an error nobody foresaw."""

    async def find(self, message_ids):
        raise RuntimeError("a bug in the reply map")


async def test_an_unexpected_error_takes_back_the_bounces_of_its_attempt(tmp_path):
    # x@hotmail.dk is bounced before the reply map fails for the next recipient: the
    # scheduler then defers what is not final, and a bounce left final would never be
    # reported (the message would leave the queue with nobody told).
    config = load(DEMO)
    spool = Spool(tmp_path)
    spool.prepare()
    env = Envelope(id=new_id(), sender="ole@partner.dk", from_outside=True,
                   recipients=[RecipientState("x@hotmail.dk"),
                               RecipientState("aeldreomsorg@brondby.dk")],
                   received=time.time())
    await spool.put(env, b"Subject: s\r\nIn-Reply-To: <a@brondby.dk>\r\n\r\nhej\r\n")
    policy = replying_policy(config, tmp_path, BuggyReplies())
    queued: list[Envelope] = []
    with pytest.raises(RuntimeError):
        await Pipeline(config, spool, policy, Recording(), queued.append).attempt(env)
    assert not any(r.state.final for r in env.recipients) and queued == []
