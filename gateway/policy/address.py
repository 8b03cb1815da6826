"""Validate and normalise e-mail addresses before anything looks them up (RFC 5321 4.1.2).

Lookups in the SEPO list, the certificate directory and LDAP filters only ever see an
address that passed here: local part as given, domain lowercased.
"""

from __future__ import annotations

import re

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = rf"{_ATOM}(?:\.{_ATOM})*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})+"
_ADDRESS = re.compile(rf"({_LOCAL})@({_DOMAIN})")


class InvalidAddress(ValueError):
    """The text is not an address we can classify."""


def normalise(address: str) -> str:
    """The address with its domain lowercased; InvalidAddress when it is not a mailbox."""
    address = address.strip(" \t")
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    m = _ADDRESS.fullmatch(address)
    if m is None or len(m[1]) > 64 or len(address) > 254:
        raise InvalidAddress(f"not a valid e-mail address: {address!r}")
    return f"{m[1]}@{m[2].lower()}"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def domain_matches(domain: str, entries: frozenset[str] | tuple[str, ...]) -> bool:
    """Exact match, or a subdomain of an entry written with a leading dot."""
    domain = domain.lower().rstrip(".")
    if domain in entries:
        return True
    parts = domain.split(".")
    return any("." + ".".join(parts[i:]) in entries for i in range(1, len(parts)))
