"""The classifier's order (internal, tunnel, directory) and its failure mode (unknown)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.model import Decision, RecipientClass
from gateway.policy.address import InvalidAddress
from gateway.policy.classify import Classifier
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
        if address == "ole@dhl.dk":
            return Decision(address, RecipientClass.SMIME, "certificate ...")
        return Decision(address, RecipientClass.UNSAFE, "no certificate")


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
