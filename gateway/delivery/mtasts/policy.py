"""Strict parsing of the MTA-STS TXT record and policy file (RFC 8461 3.1 and 3.2 ABNF).

Anything outside the grammar is refused with the reason, so that a half-understood
policy is never applied: the caller then treats it as not fetchable. As the RFC asks,
unknown fields are ignored and of a repeated field other than `mx` the first counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.delivery.mtasts import MODES, StsPolicy

MAX_AGE_LIMIT = 31557600  # RFC 8461 3.2: about a year

_WSP = " \t"
_TXT_ID = re.compile(r"id=([A-Za-z0-9]{1,32})")
_TXT_EXTENSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}=[\x21-\x3a\x3c\x3e-\x7e]+")
_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31}):[ \t]*(\S(?:[^\x00-\x1f\x7f]*\S)?)"
                    r"[ \t]*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_MX = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)*[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?")


class PolicyError(ValueError):
    """The policy file is not a valid STSv1 policy."""


def record_id(texts: Iterable[str]) -> str | None:
    """The `id` of the one STSv1 TXT record among `texts`, or None (RFC 8461 3.1).

    Records not starting with "v=STSv1" are someone else's; none, several, or one that
    breaks the grammar all mean the domain has no MTA-STS record available.
    """
    candidates = [t for t in texts if t.startswith("v=STSv1")]
    if len(candidates) != 1:
        return None
    rest = candidates[0][len("v=STSv1"):]
    parts = rest.split(";")
    if len(parts) < 2 or parts[0].strip(_WSP):  # the version must be followed by ";"
        return None
    if not parts[-1].strip(_WSP):
        parts.pop()  # one optional delimiter at the end
    found = None
    for part in parts[1:]:
        field = part.strip(_WSP)
        m = _TXT_ID.fullmatch(field)
        if m:
            found = found or m[1]
        elif not _TXT_EXTENSION.fullmatch(field):
            return None
    return found


def parse_policy(text: str) -> StsPolicy:
    """The policy in `text`; PolicyError naming the first thing that is wrong."""
    lines = re.split(r"\r?\n", text)
    while lines and not lines[-1].strip(_WSP):
        lines.pop()  # the final line break is optional
    fields: dict[str, str] = {}
    mx: list[str] = []
    for n, line in enumerate(lines, 1):
        m = _FIELD.fullmatch(line)
        if m is None:
            raise PolicyError(f"line {n} is not a 'name: value' field: {line[:80]!r}")
        name, value = m[1], m[2]
        if name == "mx":
            if not _MX.fullmatch(value):
                raise PolicyError(f"line {n}: {value!r} is not an MX pattern")
            mx.append(value.lower())
        else:
            fields.setdefault(name, value)
    for name in ("version", "mode", "max_age"):
        if name not in fields:
            raise PolicyError(f"the field {name!r} is missing")
    if fields["version"] != "STSv1":
        raise PolicyError(f"version {fields['version']!r} is not STSv1")
    mode = fields["mode"]
    if mode not in MODES:
        raise PolicyError(f"mode {mode!r} is not enforce, testing or none")
    if not re.fullmatch(r"[0-9]{1,10}", fields["max_age"]) or \
            int(fields["max_age"]) > MAX_AGE_LIMIT:
        raise PolicyError(f"max_age {fields['max_age']!r} is not a number of seconds up to "
                          f"{MAX_AGE_LIMIT}")
    if not mx and mode != "none":
        raise PolicyError(f"a policy in {mode} mode needs at least one mx pattern")
    return StsPolicy(mode, int(fields["max_age"]), tuple(mx))  # type: ignore[arg-type]
