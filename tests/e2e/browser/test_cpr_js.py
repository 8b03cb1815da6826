"""cpr.js, the add-in's copy of CONTRACT "Data-loss prevention"'s CPR rule, run in Chromium."""

from __future__ import annotations

import pytest

from gateway.policy.dlp.cpr import find_cpr_numbers
from tests.e2e.browser.conftest import Browser, screenshot
from tests.support.corpus import LOOKALIKES, POSITIVES
from tests.support.daemon import Daemon

TODAY = "2025-06-15"
FAR = " " * 41

CASES = [
    ("Vedr. 010170-1234", ["010170-XXXX"]),        # the hyphen alone makes it count
    ("Vedr. 0101701234", []),                      # fails modulus 11, no keyword
    ("Vedr. 0101701018", ["010170-XXXX"]),         # passes modulus 11
    ("Vedr. 010170 1018", ["010170-XXXX"]),        # DDMMYY SSSS, modulus 11
    ("CPR-nr.: 0101701234", ["010170-XXXX"]),      # keyword close before it
    ("cprnummer 010170 1234", ["010170-XXXX"]),    # keyword as part of a word
    ("PERSONNUMMER " + "x" * 27 + " 0101701234", ["010170-XXXX"]),  # 40 characters away
    ("cpr" + FAR + "0101701234", []),              # 41: too far
    ("610170-1234", ["610170-XXXX"]),              # substitute number: day + 60
    ("320170-1234", []),                           # no 32nd
    ("290201-1234", []),                           # 1901 was not a leap year
    ("290200-4234", ["290200-XXXX"]),              # 7th digit 4, YY <= 36: 2000, a leap year
    ("010130-4234", []),                           # 2030: in the future
    ("010130-1234", ["010130-XXXX"]),              # 7th digit 1: 1930
    ("010160-5234", ["010160-XXXX"]),              # 7th digit 5, YY > 57: 1860
    ("010150-5234", []),                           # 7th digit 5, YY <= 57: 2050, future
    ("010140-9234", ["010140-XXXX"]),              # 7th digit 9, YY > 36: 1940
    ("x010170-1234", []),                          # inside a run of letters
    ("0101701018 7", ["010170-XXXX"]),             # a separate number after it is fine
    ("01017010189", []),                           # inside a longer run of digits
    ("1.010170-1234", ["010170-XXXX"]),            # punctuation is not a letter or digit
    ("Tlf. 44 55 66 77, ordre 123456-7890", []),   # 123456: no 34th month
    ("to: 010170-1234 og 020270-1234", ["010170-XXXX", "020270-XXXX"]),
]


@pytest.fixture
def cpr_page(gateway: Daemon, browser: Browser):
    page = browser.page("/")
    page.add_script_tag(url="static/cpr.js")  # from the gateway itself, as the CSP wants
    return page


def test_cpr_rule(cpr_page):
    found = cpr_page.evaluate("""([cases, today]) => cases.map(text =>
        SendSikkertCpr.findAll(text, new Date(today + 'T12:00:00')).map(f => f.masked))""",
                              [[text for text, _ in CASES], TODAY])
    assert found == [expected for _, expected in CASES]
    screenshot(cpr_page, "cpr-rule")


def test_masking_never_shows_the_serial(cpr_page):
    found = cpr_page.evaluate("SendSikkertCpr.findAll('CPR 220910-1234')")
    assert found == [{"start": 4, "end": 15, "masked": "220910-XXXX"}]


def test_the_add_in_and_the_gateway_find_the_same_numbers(cpr_page):
    """cpr.js against the gateway's own rule, on the DLP corpus's numbers and look-alikes."""
    texts = [text for text, _ in CASES] + list(LOOKALIKES)
    texts += [f"Vedr. Bente Jensen {number}, bolig 127" for number in POSITIVES]
    texts += [f"x{number}" for number in POSITIVES] + [f"{number}7" for number in POSITIVES]
    found = cpr_page.evaluate("""texts => texts.map(text =>
        SendSikkertCpr.findAll(text).map(f => [f.start, f.end, f.masked]))""", texts)
    gateway = [[[m.start, m.end, m.masked] for m in find_cpr_numbers(t)] for t in texts]
    assert found == gateway
    assert sum(map(len, found)) >= len(POSITIVES) + 10  # the comparison is not vacuous
