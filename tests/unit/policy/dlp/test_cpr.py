"""The CPR rule of CONTRACT "Data-loss prevention", case by case.

Every number below is written out so a reader can check it by hand: DDMMYY, then the
sequence digits whose first (the 7th digit) gives the century. "mod-11 ok" numbers pass
the weights 4,3,2,7,6,5,4,3,2,1; "mod-11 fails" ones do not.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from stdnum.dk.cpr import checksum

from gateway.policy.dlp.cpr import contains_cpr, find_cpr_numbers, mask, mask_text


def found(text: str) -> list[tuple[str, str]]:
    return [(m.digits, m.reason) for m in find_cpr_numbers(text)]


def test_the_table_knows_its_check_digits():
    assert checksum("0101901238") == 0 and checksum("0101901230") != 0
    assert checksum("2902004125") == 0 and checksum("0101205126") == 0
    assert checksum("0101104120") != 0 and checksum("6101901236") == 0


# (text, the digits that count, why) -- or None when nothing counts.
COUNTS = [
    # the three written forms
    ("Bente 010190-1230", "0101901230", "hyphen"),  # mod-11 fails: the hyphen is enough
    ("Bente 010190 1238", "0101901238", "modulus11"),
    ("Bente 0101901238", "0101901238", "modulus11"),
    ("Bente 010190\u20131230", "0101901230", "hyphen"),  # an en dash from Word
    ("Bente 010190\u00a01238", "0101901238", "modulus11"),  # &nbsp;
    # centuries by the 7th digit: 0-3 the 1900s
    ("f. 220910-1230", "2209101230", "hyphen"),
    ("311299-1230", "3112991230", "hyphen"),
    # 4 and 9: 2000-2036 for YY <= 36, else 1937-1999
    ("290200-4125", "2902004125", "hyphen"),  # 29 Feb 2000, a leap day
    ("010137-4122", "0101374122", "hyphen"),  # 1937
    ("010120-9120", "0101209120", "hyphen"),  # 2020
    # 5-8: 2000-2057 for YY <= 57, else 1858-1899
    ("010120-5126", "0101205126", "hyphen"),  # 2020
    ("010158-5123", "0101585123", "hyphen"),  # 1858
    ("290260-5129", "2902605129", "hyphen"),  # 29 Feb 1860, a leap day
    # substitute numbers: day + 60
    ("610190-1230", "6101901230", "hyphen"),  # 1 Jan 1990
    ("6101901236", "6101901236", "modulus11"),
    ("910190-1230", "9101901230", "hyphen"),  # 31 Jan 1990
    # issued since 2007 and failing modulus-11: hyphen or keyword makes it count
    ("010110-4120", "0101104120", "hyphen"),
    ("CPR-nr.: 0101104120", "0101104120", "keyword"),
    ("cprnummer 0101104120", "0101104120", "keyword"),
    ("Personnummer 0101104120", "0101104120", "keyword"),
    ("PERSONNUMMER 010110 4120", "0101104120", "keyword"),
    ("erstatningspersonnummer: 6101104120", "6101104120", "keyword"),
    ("cpr" + " " * 40 + "0101104120", "0101104120", "keyword"),  # ends exactly 40 before
    # punctuation and "_" do not glue
    ("(010190-1230)", "0101901230", "hyphen"),
    ("cpr_0101104120", "0101104120", "keyword"),
    ("nr:0101901238.", "0101901238", "modulus11"),
]

NOTHING = [
    # not a real date, or not in that century
    "290200-0120",  # 29 Feb 1900 was no leap day
    "310290-1230",  # 31 February
    "320190-1230",  # day 32
    "920190-1230",  # substitute day 32
    "011390-1230",  # month 13
    "000190-1230",  # day 0
    "010150-5120",  # 7th digit 5, YY 50: 2050, not born yet
    "010136-4120",  # 2036, not born yet
    # issued since 2007, mod-11 fails, no hyphen and no keyword
    "0101104120",
    "010110 4120",
    # keyword too far away, or after the number
    "cpr" + " " * 41 + "0101104120",
    "0101104120 cpr",
    "CPR " + "x" * 45 + " 0101104120",
    # glued to letters or inside longer runs of digits
    "abc010190-1230",
    "010190-1230abc",
    "bør010190-1230",
    "12010190-1230",
    "010190-12301",
    "0101901238 7",  # fine on its own...
    # phone numbers
    "tlf. 43 96 12 34, mobil +45 22 33 44 55",
    "ring på 4396123400",  # 43/96: no such date
    "+4522334455",
    # dates and times
    "mødet 01-01-1990 kl. 10.30, 2024-01-15T10:30:00",
    "01.01.90 1234",
    # CVR, EAN, IBAN, account numbers, amounts
    "CVR-nr. 12345678, DK12345678",
    "EAN 5790000123456",
    "IBAN DK50 0040 0440 1162 43, DK5000400440116243",
    "reg. 1234 konto 0123456789",
    "beløb: 1.234.567,89 kr., i alt 1 234 567 890 kr.",
    "kr. 1234567890",
]


@pytest.mark.parametrize(("text", "digits", "reason"), COUNTS)
def test_counts(text: str, digits: str, reason: str):
    assert found(text) == [(digits, reason)]


@pytest.mark.parametrize("text", [t for t in NOTHING if t != "0101901238 7"])
def test_does_not_count(text: str):
    assert found(text) == []
    assert not contains_cpr(text)


def test_a_digit_after_a_space_does_not_glue():
    assert found("0101901238 7") == [("0101901238", "modulus11")]


def _cpr_for(day: date, seventh: str) -> str:
    return f"{day:%d%m%y}-{seventh}120"


def test_today_counts_and_tomorrow_does_not():
    today, tomorrow = date.today(), date.today() + timedelta(days=1)
    assert found(_cpr_for(today, "4")) != []
    assert found(_cpr_for(tomorrow, "4")) == []  # not born yet
    assert found(_cpr_for(tomorrow.replace(year=tomorrow.year - 100), "3")) != []
    substitute = f"{today.day + 60:02d}{today:%m%y}-4120"
    assert found(substitute) != []


def test_several_numbers_each_found_once_in_order():
    text = "Bente 010190-1230 og Ole 220910-1231, igen Bente 010190-1230"
    assert [m.digits for m in find_cpr_numbers(text)] == [
        "0101901230", "2209101231", "0101901230"]


def test_the_keyword_counts_for_every_number_close_after_it():
    text = "CPR: 0101104120, 0101104121"
    assert [m.reason for m in find_cpr_numbers(text)] == ["keyword", "keyword"]


def test_masking_never_shows_the_sequence():
    assert mask("0101901230") == "010190-XXXX"
    [m] = find_cpr_numbers("Bente 010190 1238.")
    assert m.masked == "010190-XXXX"
    assert mask_text("Bente 010190-1230, Ole 2209101230!") == (
        "Bente 010190-XXXX, Ole 220910-XXXX!")
    assert mask_text("ingen her 12345") == "ingen her 12345"
