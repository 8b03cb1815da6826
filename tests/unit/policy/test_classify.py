"""The classifier's order (internal, SEPO, directory, DANE/MTA-STS) and its failure mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import RoutesConfig
from gateway.model import Decision, RecipientClass, TransportCheck
from gateway.policy.address import InvalidAddress
from gateway.policy.classify import Classifier
from gateway.policy.routing import Routing
from gateway.policy.sepo import SepoList

SEPO = SepoList(frozenset({"ast.dk", ".region.dk"}), Path("sepo.txt"))


class Directory:
    """A certificate directory double: one known address, or a fault."""

    def __init__(self, fault: Exception | None = None) -> None:
        self.fault = fault
        self.asked: list[str] = []

    async def classify(self, address: str) -> Decision:
        self.asked.append(address)
        if self.fault:
            raise self.fault
        if address in ("ole@dhl.dk", "smime@dane.dk"):
            return Decision(address, RecipientClass.SMIME, "certificate ...")
        if address.endswith("@down.dk"):
            return Decision(address, RecipientClass.UNKNOWN, "directory down")
        return Decision(address, RecipientClass.UNSAFE, "no certificate")


class Transport:
    """A DANE/MTA-STS double: answers by domain, or a fault."""

    ANSWERS = {
        "dane.dk": TransportCheck("secure", "dane", "DANE: mx1.dane.dk"),
        "sts.dk": TransportCheck("secure", "mta_sts", "MTA-STS: mx.sts.dk"),
        "down.dk": TransportCheck("secure", "dane", "DANE: mx.down.dk"),
        "servfail.dk": TransportCheck("failed", "dane", "DANE: SERVFAIL"),
    }

    def __init__(self, fault: Exception | None = None) -> None:
        self.fault = fault
        self.asked: list[str] = []

    async def check(self, domain: str) -> TransportCheck:
        self.asked.append(domain)
        if self.fault:
            raise self.fault
        return self.ANSWERS.get(domain, TransportCheck("insecure", "", "no DANE; no MTA-STS"))


async def test_first_match_wins():
    directory = Directory()
    classifier = Classifier(("brondby.dk",), SEPO, directory)
    got = [(await classifier.classify(a)).cls for a in
           ("a@brondby.dk", "b@AST.dk", "c@x.region.dk", "ole@dhl.dk", "d@hotmail.dk")]
    assert got == ["internal", "tunnel", "tunnel", "smime", "unsafe"]
    assert directory.asked == ["ole@dhl.dk", "d@hotmail.dk"]  # only when it matters


async def test_a_fault_is_unknown_never_unsafe():
    classifier = Classifier(("brondby.dk",), SEPO, Directory(RuntimeError("bug")))
    decision = await classifier.classify("ole@dhl.dk")
    assert decision.cls == RecipientClass.UNKNOWN and "bug" in decision.reason


async def test_without_directory_and_invalid_addresses():
    classifier = Classifier(("brondby.dk",), SEPO, None)
    assert (await classifier.classify("ole@dhl.dk")).cls == RecipientClass.UNSAFE
    with pytest.raises(InvalidAddress):
        await classifier.classify("*)(mail=*")


async def test_dane_and_mta_sts_come_after_the_directory():
    transport = Transport()
    classifier = Classifier(("brondby.dk",), SEPO, Directory(), transport)
    got = {a: await classifier.classify(a) for a in (
        "a@brondby.dk", "b@ast.dk", "smime@dane.dk", "c@dane.dk", "d@sts.dk", "e@hotmail.dk")}
    assert {a: (d.cls, d.mechanism) for a, d in got.items()} == {
        "a@brondby.dk": ("internal", ""), "b@ast.dk": ("tunnel", "sepo"),
        "smime@dane.dk": ("smime", ""), "c@dane.dk": ("tunnel", "dane"),
        "d@sts.dk": ("tunnel", "mta_sts"), "e@hotmail.dk": ("unsafe", "")}
    assert got["c@dane.dk"].reason == "DANE: mx1.dane.dk"
    assert got["e@hotmail.dk"].reason == "no certificate; no DANE; no MTA-STS"
    assert got["c@dane.dk"].as_json()["mechanism"] == "dane"
    assert "mechanism" not in got["e@hotmail.dk"].as_json()
    assert "brondby.dk" not in transport.asked and "ast.dk" not in transport.asked


async def test_an_unknown_directory_answer_stays_unknown_whatever_dane_says():
    classifier = Classifier(("brondby.dk",), SEPO, Directory(), Transport())
    assert (await classifier.classify("x@down.dk")).cls == RecipientClass.UNKNOWN


@pytest.mark.parametrize("transport", [Transport(), Transport(RuntimeError("bug"))])
async def test_a_failed_lookup_is_unknown(transport):
    classifier = Classifier(("brondby.dk",), SEPO, Directory(), transport)
    address = "x@servfail.dk" if transport.fault is None else "x@dane.dk"
    decision = await classifier.classify(address)
    assert decision.cls == RecipientClass.UNKNOWN


async def test_only_domains_delivered_by_mx_are_asked(tmp_path: Path):
    routes = RoutesConfig(internal="smtp://127.0.0.1:2600", default="mx",
                          transport={"dane.dk": "smtp://relay.example:25"})
    transport = Transport()
    classifier = Classifier(("brondby.dk",), SEPO, Directory(), transport,
                            Routing(routes, ("brondby.dk",)))
    decision = await classifier.classify("c@dane.dk")
    assert decision.cls == RecipientClass.UNSAFE and "goes via smtp://relay" in decision.reason
    assert (await classifier.classify("d@sts.dk")).cls == RecipientClass.TUNNEL
    assert transport.asked == ["sts.dk"]


async def test_without_a_directory_dane_still_counts():
    classifier = Classifier(("brondby.dk",), SEPO, None, Transport())
    assert (await classifier.classify("c@dane.dk")).cls == RecipientClass.TUNNEL
