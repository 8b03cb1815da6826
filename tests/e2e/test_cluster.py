"""A cluster on one machine: three nodes behind HAProxy, one PostgreSQL, real sinks.

The scenarios an operator of a shared service cares about, in the order they run (they
share one cluster, started once, and each leaves it whole): mail through the balancer
reaches the sinks and is spread over the nodes; a node killed with SIGKILL under load
loses nothing, its queue going out when it comes back; the database stopped and started
again stops nothing that does not need it and heals by itself.
"""

from __future__ import annotations

import asyncio
import email
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest
import pytest_asyncio

from tests.support.cluster import Cluster
from tests.support.daemon import Daemon
from tests.support.pki import CA
from tests.support.postgres import Postgres
from tests.support.sink import SmtpSink

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXCHANGE = "127.0.0.5"  # the smarthost client, in relay_networks
SINKS = "127.0.14.1"  # an address of their own: nothing else on the machine delivers here
READY = 200
REFUSE_FOR_NOW = "451 4.3.0 Not now"


def message(n: int, tag: str) -> bytes:
    return (f"From: Lene Larsen <lela@brondby.dk>\r\nTo: kunde@hotmail.dk\r\n"
            f"Subject: {tag} {n}\r\nMessage-ID: <{tag}-{n}@brondby.dk>\r\n\r\n"
            f"Besked nummer {n}\r\n").encode()


def message_ids(sink: SmtpSink) -> set[str]:
    return {str(email.message_from_bytes(m.content)["Message-ID"]) for m in sink.messages}


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
                    {"internal": internal.route, "default": outside.route})
    try:
        await asyncio.to_thread(nodes.start)
        yield nodes
    finally:
        await asyncio.to_thread(nodes.stop)


async def test_mail_through_the_balancer_reaches_the_sinks_from_every_node(
        cluster: Cluster, outside: SmtpSink):
    accepted = await send_many(cluster, 30, "spread")
    await eventually(lambda: set(accepted) <= message_ids(outside), 30, "all delivered")
    counts = await asyncio.gather(*(asyncio.to_thread(delivered_by, n) for n in cluster.nodes))
    assert all(c > 0 for c in counts), counts  # round robin: every node took its share
    for node in cluster.nodes:  # and each knows the client behind the balancer
        assert f"client={EXCHANGE}" in node.logs()


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


async def test_without_the_database_mail_that_needs_nothing_shared_flows(
        cluster: Cluster, outside: SmtpSink, private_pg: Postgres):
    await asyncio.to_thread(private_pg.stop)
    try:
        accepted = await send_many(cluster, 12, "nodb")
        await eventually(lambda: set(accepted) <= message_ids(outside), 30, "delivered")
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
