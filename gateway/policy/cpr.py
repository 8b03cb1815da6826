"""Spot what looks like a CPR number (Danish personal ID, DDMMYY-SSSS) in a subject line.

S/MIME never encrypts the subject, so a tagged mail with a CPR number there is refused.
python-stdnum knows the number's rules (a real birth date, the century digit).
"""

from __future__ import annotations

import re

from stdnum.dk import cpr

_CANDIDATE = re.compile(r"(?<!\d)(\d{6})[- ]?(\d{4})(?!\d)")


def find_cpr(text: str) -> str | None:
    """The first CPR-like number in the text, or None."""
    for m in _CANDIDATE.finditer(text):
        if cpr.is_valid(m[1] + m[2]):
            return m[0]
    return None
