"""Compare generated mail with a golden file whose variable parts are placeholders.

In the golden file `{*}` matches any text within one line (dates, message ids), and
`{name}` matches any text too but must stand for the same text everywhere it appears
(a MIME boundary). Line endings are ignored; everything else must be equal.
"""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"\{(\*|[a-z_]+)\}")


def assert_matches_golden(actual: str, golden: str) -> None:
    """AssertionError naming the first line that differs."""
    got, want = actual.splitlines(), golden.splitlines()
    bound: dict[str, str] = {}
    for number, (line, pattern) in enumerate(zip(got, want, strict=False), start=1):
        names: list[str] = []
        regex = ""
        for literal, name in _split(pattern):
            regex += re.escape(literal)
            if name == "*":
                regex += ".*?"
            elif name in bound:
                regex += re.escape(bound[name])
            elif name in names:
                regex += f"(?P={name})"
            elif name:
                regex += f"(?P<{name}>.+?)"
                names.append(name)
        m = re.fullmatch(regex, line)
        assert m, f"line {number} differs:\n  got:    {line!r}\n  golden: {pattern!r}"
        bound.update({name: m[name] for name in names})
    assert len(got) == len(want), f"{len(got)} lines, golden has {len(want)}"


def _split(pattern: str) -> list[tuple[str, str]]:
    """(literal text, placeholder name or "") pairs."""
    parts, pos = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        parts.append((pattern[pos:m.start()], m[1]))
        pos = m.end()
    parts.append((pattern[pos:], ""))
    return parts
