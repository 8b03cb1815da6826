"""Recall and false positives on the labelled corpus (tests/support/corpus.py)."""

from __future__ import annotations

from gateway.policy.dlp.scan import scan_message
from tests.support.corpus import corpus


def test_every_number_found_and_nothing_else():
    missed, wrong, expected = [], [], 0
    for label, message, numbers in corpus():
        found = {f.masked for f in scan_message(message).findings}
        expected += len(numbers)
        missed += [(label, n) for n in numbers - found]
        wrong += [(label, n) for n in found - numbers]
    assert expected > 80
    assert missed == [] and wrong == []
