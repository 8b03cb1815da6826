"""Find CPR numbers (Danish personal ID numbers) in text: the one rule, used everywhere.

CONTRACT "Data-loss prevention" fixes it. A candidate is ten digits `DDMMYYSSSS`, written
`DDMMYY-SSSS`, `DDMMYY SSSS` or `DDMMYYSSSS`, that is not part of a longer run of letters
or digits. `DDMMYY` must be a real date that is not in the future, in the century the
seventh digit gives; a substitute number (erstatningspersonnummer) adds 60 to the day.
python-stdnum's `stdnum.dk.cpr` applies the date, century and future rules. A candidate
counts when it is written with the hyphen, when it passes the modulus-11 check (weights
4,3,2,7,6,5,4,3,2,1), or when `cpr` or `personnummer` (any case, also inside a word such
as `CPR-nr.`) ends at most 40 characters before it. Numbers issued since 2007 may fail
modulus-11, so it is never required.

Beyond the letter of the rule, dashes that word processors put in place of the hyphen
(U+2010-U+2013, U+2212) count as the hyphen, and a no-break space (U+00A0, U+202F, as
`&nbsp;` gives) as the space.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from stdnum.dk import cpr as stdnum_cpr
from stdnum.exceptions import ValidationError

Reason = Literal["hyphen", "modulus11", "keyword"]

_HYPHENS = "-\u2010\u2011\u2012\u2013\u2212"
_SPACES = " \u00a0\u202f"
# Letters and digits of any script bound a candidate; "_" and punctuation do not. The
# character before is checked by hand: a lookbehind first would be tried at every position.
# The first digit stands alone so that the engine skips to the next digit in C (it cannot
# see a set behind a repeat), three times as fast as `[0-9]{6}` on text with few digits.
_CANDIDATE = re.compile(rf"([0-9][0-9]{{5}})([{_HYPHENS}{_SPACES}]?)([0-9]{{4}})(?![^\W_])")
# Logs mask more cautiously: any ten digits with a real date, even glued to letters.
_LOOSE_CANDIDATE = re.compile(rf"(?<![0-9])([0-9]{{6}})[{_HYPHENS}{_SPACES}]?([0-9]{{4}})(?![0-9])")
_KEYWORD = re.compile(r"cpr|personnummer", re.IGNORECASE)
KEYWORD_DISTANCE = 40
_LONGEST_KEYWORD = len("personnummer")
SUBSTITUTE_DAY_OFFSET = 60


@dataclass(frozen=True)
class CprMatch:
    """One CPR number found in a text: where, the ten digits, and why it counts."""

    start: int
    end: int
    digits: str  # DDMMYYSSSS
    reason: Reason

    @property
    def masked(self) -> str:
        """`DDMMYY-XXXX`: the form that may be shown to an operator."""
        return mask(self.digits)


def mask(digits: str) -> str:
    """The number as `DDMMYY-XXXX`; the sequence number is never shown."""
    return f"{digits[:6]}-XXXX"


def real_date(digits: str) -> bool:
    """Whether DDMMYY is a real, past date in the century the 7th digit gives.

    A substitute number's day is 61-91; it is checked as the day 60 earlier.
    """
    day = int(digits[:2])
    if day > SUBSTITUTE_DAY_OFFSET:
        digits = f"{day - SUBSTITUTE_DAY_OFFSET:02d}{digits[2:]}"
    try:
        stdnum_cpr.validate(digits)  # the date, its century and "not born yet"
    except ValidationError:
        return False
    return True


def passes_modulus11(digits: str) -> bool:
    return stdnum_cpr.checksum(digits) == 0


def _keyword_before(text: str, start: int) -> bool:
    """`cpr` or `personnummer` ends at most KEYWORD_DISTANCE characters before `start`."""
    window_start = max(0, start - KEYWORD_DISTANCE - _LONGEST_KEYWORD)
    return any(m.end() >= start - KEYWORD_DISTANCE
               for m in _KEYWORD.finditer(text, window_start, start))


def find_cpr_numbers(text: str) -> Iterator[CprMatch]:
    """Every CPR number in `text` that counts by the contract's rule, in order."""
    for m in _candidates(text, 0):
        match = _judge(text, m)
        if match is not None:
            yield match


def _candidates(text: str, pos: int) -> Iterator[re.Match[str]]:
    """Each candidate not glued to a letter or digit before it, searched on from its end."""
    while (m := _CANDIDATE.search(text, pos)) is not None:
        if m.start() > 0 and text[m.start() - 1].isalnum():
            pos = m.start() + 1  # glued: a later candidate may still start inside this one
            continue
        yield m
        pos = m.end()


def _judge(text: str, m: re.Match[str]) -> CprMatch | None:
    """The candidate as a CPR number, if it counts by the rule."""
    digits = m[1] + m[3]
    if not real_date(digits):
        return None
    separator = m[2]
    if separator and separator in _HYPHENS:
        reason: Reason = "hyphen"
    elif passes_modulus11(digits):
        reason = "modulus11"
    elif _keyword_before(text, m.start()):
        reason = "keyword"
    else:
        return None
    return CprMatch(m.start(), m.end(), digits, reason)


class CprStream:
    """`find_cpr_numbers` over a text that arrives in pieces: every number once, exactly
    those the whole text holds, however it is split.

    A candidate is judged only once the character after it has arrived (or the text has
    ended), and the characters a judgement looks back at (the one before a candidate, and
    the keyword window) are kept from the previous pieces; nothing else is held.
    """

    _BEHIND = KEYWORD_DISTANCE + _LONGEST_KEYWORD  # characters kept before a candidate
    _AHEAD = 12  # the longest candidate, and the character after it

    def __init__(self) -> None:
        self._text = ""  # the text from absolute offset _base on
        self._base = 0
        self._pos = 0  # where the search goes on (absolute)

    def feed(self, piece: str) -> list[CprMatch]:
        """The numbers that `piece` completes."""
        self._text = self._text + piece if self._text else piece
        return self._search(final=False)

    def close(self) -> list[CprMatch]:
        """The numbers at the very end of the text."""
        return self._search(final=True)

    def _search(self, final: bool) -> list[CprMatch]:
        text, base, found = self._text, self._base, []
        pos, end = self._pos - base, len(text)
        for m in _candidates(text, pos):
            if m.end() >= end and not final:
                # Undecided until the character after it arrives; no earlier position
                # can still become a candidate (each needs at most _AHEAD characters).
                pos = m.start()
                break
            pos = m.end()
            match = _judge(text, m)
            if match is not None:
                found.append(CprMatch(base + match.start, base + match.end, match.digits,
                                      match.reason))
        else:
            pos = max(pos, end - self._AHEAD)  # before this every position is decided
        keep = max(0, pos - self._BEHIND)
        self._text, self._base, self._pos = text[keep:], base + keep, base + pos
        return found


def contains_cpr(text: str) -> bool:
    """Whether `text` holds at least one CPR number."""
    return next(find_cpr_numbers(text), None) is not None


def mask_text(text: str) -> str:
    """`text` with the sequence digits of every CPR number in it replaced by X."""
    pieces, pos = [], 0
    for m in find_cpr_numbers(text):
        pieces += [text[pos:m.start], text[m.start:m.start + 6], "-XXXX"]
        pos = m.end
    return "".join(pieces) + text[pos:]


def mask_possible(text: str, replacement: str = "XXXXXX-XXXX") -> str:
    """`text` with every ten-digit run that holds a real CPR date replaced, whether or not it
    counts by the rule: for logs and other free text, where caution costs nothing."""
    return _LOOSE_CANDIDATE.sub(
        lambda m: replacement if real_date(m[1] + m[2]) else m[0], text)
