"""A cluster on one machine: three nodes behind HAProxy, one PostgreSQL, real sinks.

The scenarios an operator of a shared service cares about, in the order they run (they
share one cluster, started once, and each leaves it whole): mail through the balancer
reaches the sinks and is spread over the nodes; a partner's certificate learnt on one
node is used by another, and the partner's reply reaching a third finds the person; a
certificate imported on one node counts on all; a
node killed with SIGKILL under load loses nothing, its queue going out when it comes
back; the database stopped and started again stops nothing that does not need it, holds
what does, and heals by itself. Tests that must pick a node talk to it directly.
"""

from __future__ import annotations

import asyncio
import email
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiosmtplib
import pytest
import pytest_asyncio

from tests.support.cluster import Cluster
from tests.support.daemon import Daemon
from tests.support.partner import Partner, crlf, text_entity
from tests.support.pki import CA
from tests.support.postgres import Postgres
from tests.support.sink import Received, SmtpSink

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXCHANGE = "127.0.0.5"  # the smarthost client, in relay_networks
PARTNER = "127.0.0.7"  # a partner's mail server on the Internet, outside relay_networks
DEPARTMENT = "aeldreomsorg@brondby.dk"
EXIT_OK, EXIT_TEMPFAIL = 0, 75
INBOUND = """
[inbound]
enabled = true
harvest = "learnt"
"""
SINKS = "127.0.14.1"  # an address of their own: nothing else on the machine delivers here
READY = 200
REFUSE_FOR_NOW = "451 4.3.0 Not now"


def message(n: int, tag: str) -> bytes:
    return (f"From: Lene Larsen <lela@brondby.dk>\r\nTo: kunde@hotmail.dk\r\n"
            f"Subject: {tag} {n}\r\nMessage-ID: <{tag}-{n}@brondby.dk>\r\n\r\n"
            f"Besked nummer {n}\r\n").encode()


def message_ids(sink: SmtpSink) -> set[str]:
    return {str(email.message_from_bytes(m.content)["Message-ID"]) for m in sink.messages}


def by_subject(sink: SmtpSink, subject: str) -> Received | None:
    return next((m for m in sink.messages if m.message["Subject"] == subject), None)


def smime(node: Daemon, address: str) -> bool:
    status, body = node.http(f"/api/check?address={address}")
    return status == READY and body["results"][0]["class"] == "smime"


async def send(cluster: Cluster, n: int, tag: str) -> str:
    """One message through the balancer, retried until it gets a 250, as Exchange would."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await aiosmtplib.send(message(n, tag), sender="lela@brondby.dk",
                                  recipients=["kunde@hotmail.dk"], hostname="127.0.0.1",
                                  port=cluster.port, source_address=(EXCHANGE, 0),
                                  timeout=10, start_tls=False)
            return f"<{tag}-{n}@brondby.dk>"
        except (aiosmtplib.SMTPException, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def send_many(cluster: Cluster, count: int, tag: str, parallel: int = 8,
                    accepted: list[str] | None = None) -> list[str]:
    done = accepted if accepted is not None else []
    gate = asyncio.Semaphore(parallel)

    async def one(n: int) -> None:
        async with gate:
            done.append(await send(cluster, n, tag))

    await asyncio.gather(*(one(n) for n in range(count)))
    return done


async def eventually(condition, within: float, what: str) -> None:
    """Poll `condition` (which may ask the daemons over HTTP) until it holds."""
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.2)


def delivered_by(node: Daemon) -> float:
    return node.metric("sendsikkert_recipients_total", **{"class": "plain",
                                                          "outcome": "delivered"})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def outside() -> AsyncIterator[SmtpSink]:
    """Where mail for other domains goes: the Internet, as far as the nodes know."""
    async with SmtpSink(host=SINKS) as sink:
        yield sink


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def internal() -> AsyncIterator[SmtpSink]:
    """The municipality's Exchange, for internal recipients and DSNs."""
    async with SmtpSink(host=SINKS) as sink:
        yield sink


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory, ca: CA, private_pg: Postgres,
                  outside: SmtpSink, internal: SmtpSink) -> AsyncIterator[Cluster]:
    root: Path = tmp_path_factory.mktemp("cluster")
    nodes = Cluster(root, ca, private_pg,
                    {"internal": internal.route, "default": outside.route},
                    relay_networks=[f"{EXCHANGE}/32"], extra=INBOUND, replies="department")
    try:
        await asyncio.to_thread(nodes.start)
        yield nodes
    finally:
        await asyncio.to_thread(nodes.stop)


async def test_mail_through_the_balancer_reaches_the_sinks_from_every_node(
        cluster: Cluster, outside: SmtpSink):
    accepted = await send_many(cluster, 30, "spread")
    await eventually(lambda: set(accepted) <= message_ids(outside), 30, "all delivered")
    # Round robin: every node took its share. A node counts a delivery once the sink's 250
    # is back, a moment after the sink has the message.
    await eventually(lambda: all(delivered_by(n) > 0 for n in cluster.nodes), 10,
                     "a delivery counted by every node")
    for node in cluster.nodes:  # and each knows the client behind the balancer
        assert f"client={EXCHANGE}" in node.logs()


@pytest.fixture(scope="module")
def ole(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[Partner]:
    """Ole at a partner, in no directory, with a certificate from a CA the nodes trust."""
    partner = Partner(tmp_path_factory.mktemp("ole"), ca.issue("ole@partner.dk"), ca)
    yield partner
    partner.close()


async def test_what_one_node_learns_another_uses_and_a_reply_finds_its_person(
        cluster: Cluster, outside: SmtpSink, internal: SmtpSink, ole: Partner):
    first, second, third = cluster.nodes
    # Ole writes to Lene, signed; his mail server happens to reach the first node.
    question = ole.mail(ole.sign(text_entity("Hvordan har min mor det?\n")),
                        to="lela@brondby.dk", subject="Min mor")
    await asyncio.to_thread(first.send, ole.address, ["lela@brondby.dk"], question,
                            source=PARTNER)
    await eventually(lambda: by_subject(internal, "Min mor") is not None, 30, "delivered")
    assert first.metric("sendsikkert_certificates_learnt_total", source="signature") == 1
    # The second node knows Ole's certificate within seconds, in the daemon and in a
    # `check` process of its own.
    await eventually(lambda: smime(second, ole.address), 15, "the second node sees it")
    done = await asyncio.to_thread(second.cli, "check", ole.address)
    assert done.returncode == EXIT_OK and "(learnt)" in done.stdout

    # Lene answers with "Send Sikkert" through the third node: encrypted to Ole.
    answer = (b"From: Lene Larsen <lela@brondby.dk>\r\nTo: ole@partner.dk\r\n"
              b"Subject: Sv: Min mor\r\nMessage-ID: <svar-1@brondby.dk>\r\n"
              b"X-Send-Sikkert: aeldreomsorg\r\n\r\nHun har det godt.\r\n")
    await asyncio.to_thread(third.send, "lela@brondby.dk", [ole.address], answer,
                            source=EXCHANGE)
    await eventually(lambda: by_subject(outside, "Sv: Min mor") is not None, 30, "sent")
    sent = by_subject(outside, "Sv: Min mor")
    assert sent is not None and sent.message.get_content_type() == "application/pkcs7-mime"
    assert sent.message["Reply-To"].addresses[0].addr_spec == DEPARTMENT
    signed = ole.openssl("-decrypt", "-recip", ole.cert, "-inkey", ole.key,
                         data=crlf(sent.content))
    assert b"Hun har det godt." in signed

    # Ole's encrypted reply to the department reaches the second node: it goes to Lene.
    department = first.config.department.cert
    reply = ole.mail(ole.encrypt(ole.sign(text_entity("Tak for svaret.\n")), [department]),
                     to=DEPARTMENT, subject="Sv: Sv: Min mor", in_reply_to="<svar-1@brondby.dk>")
    await asyncio.to_thread(second.send, ole.address, [DEPARTMENT], reply, source=PARTNER)
    await eventually(lambda: by_subject(internal, "Sv: Sv: Min mor") is not None, 30,
                     "the reply delivered")
    routed = by_subject(internal, "Sv: Sv: Min mor")
    assert routed is not None and routed.rcpt_tos == ["lela@brondby.dk"]
    assert routed.message["X-Send-Sikkert-Received"].startswith("decrypted=aeldreomsorg")
    assert "Tak for svaret." in routed.content.decode()


async def test_a_certificate_imported_on_one_node_counts_on_every_node(
        cluster: Cluster, ca: CA, tmp_path: Path):
    kim = tmp_path / "kim.pem"
    ca.issue("kim@partner.dk").write(kim, with_chain=False)
    done = await asyncio.to_thread(cluster.nodes[2].cli, "certs", "import", str(kim))
    assert done.returncode == EXIT_OK, done.stderr
    for node in cluster.nodes:
        await eventually(lambda node=node: smime(node, "kim@partner.dk"), 15,
                         f"{node.config.root.name} sees the imported certificate")


async def test_a_node_killed_under_load_loses_nothing(cluster: Cluster, outside: SmtpSink):
    outside.data_reply = REFUSE_FOR_NOW  # the next hop is down: every node keeps a queue
    before = message_ids(outside)
    accepted: list[str] = []
    load = asyncio.create_task(send_many(cluster, 120, "load", accepted=accepted))
    await eventually(lambda: len(accepted) >= 40, 30, "the load under way")
    await asyncio.to_thread(cluster.kill, 1)  # in the middle of it all
    await load
    held = cluster.queued(1)
    assert held > 0  # the dead node has mail that only it can deliver

    outside.data_reply = None  # the next hop is back
    for i in (0, 2):
        await eventually(lambda i=i: cluster.queued(i) == 0, 30, f"node{i + 1} delivered")
    missing = set(accepted) - message_ids(outside)
    assert 0 < len(missing) <= held  # what is missing sits in the dead node's spool

    await asyncio.to_thread(cluster.restart, 1)
    await eventually(lambda: cluster.queued(1) == 0, 30, "node2 delivered its queue")
    assert set(accepted) <= message_ids(outside) - before
    assert "picked up" in cluster.nodes[1].logs()


async def test_without_the_database_what_needs_it_waits_and_the_rest_flows(
        cluster: Cluster, outside: SmtpSink, private_pg: Postgres, ole: Partner):
    await asyncio.to_thread(private_pg.stop)
    secure = (b"From: Lene Larsen <lela@brondby.dk>\r\nTo: ole@partner.dk\r\n"
              b"Subject: Sv: Igen\r\nMessage-ID: <svar-2@brondby.dk>\r\n"
              b"X-Send-Sikkert: aeldreomsorg\r\n\r\nOgsaa i dag.\r\n")
    try:
        # Ole's certificate is only in the database: his mail waits, it never bounces.
        # (The first node learnt it but never looked it up: it has no cached answer.)
        waiting = cluster.nodes[0]
        assert (await asyncio.to_thread(waiting.cli, "check", ole.address)).returncode == (
            EXIT_TEMPFAIL)
        await asyncio.to_thread(waiting.send, "lela@brondby.dk", [ole.address], secure,
                                source=EXCHANGE)
        accepted = await send_many(cluster, 12, "nodb")
        await eventually(lambda: set(accepted) <= message_ids(outside), 30, "delivered")
        await eventually(lambda: waiting.metric("sendsikkert_recipients_total", **{
            "class": "unknown", "outcome": "deferred"}) >= 1, 20, "Ole's mail deferred")
        assert by_subject(outside, "Sv: Igen") is None
        for node in cluster.nodes:
            status, body = await asyncio.to_thread(node.http, "/readyz")
            assert status == READY and "cluster database unreachable" in body["warnings"][0]
        errors = await asyncio.gather(*(asyncio.to_thread(
            n.metric, "sendsikkert_cluster_database_errors_total") for n in cluster.nodes))
        assert all(e > 0 for e in errors), errors
    finally:
        await asyncio.to_thread(private_pg.start)
    for node in cluster.nodes:
        await eventually(lambda node=node: "warnings" not in node.http("/readyz")[1], 20,
                         f"{node.config.root.name} healed")
    # Healed: the mail that waited goes out, encrypted to Ole.
    await eventually(lambda: by_subject(outside, "Sv: Igen") is not None, 30, "delivered")
    held = by_subject(outside, "Sv: Igen")
    assert held is not None and held.message.get_content_type() == "application/pkcs7-mime"
