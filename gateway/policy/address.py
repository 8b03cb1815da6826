"""Validate and normalise e-mail addresses before anything looks them up (RFC 5321 4.1.2,
RFC 6531 3.3 for UTF-8 mailboxes, RFC 5890 for internationalised domain names).

Lookups in the SEPO list, the certificate directory and LDAP filters only ever see an
address that passed here: local part as given, domain lowercased. One rule for every
address, sender or recipient, at the edge, in `check` and in the API:

- the local part is a dot-atom; with UTF-8 allowed, its non-ASCII characters must be
  letters, marks, digits, punctuation or symbols (no controls, format characters such as
  bidi overrides, or spaces) in NFC (RFC 6532 3.1);
- `%` and `!` are refused in the local part (no percent hack, no bang path: an MTA
  behind us that honoured them would carry the mail elsewhere), and quoted local parts,
  which could hold `@`, are not accepted;
- the domain is LDH labels or, with UTF-8 allowed, IDNA 2008 U-labels.
"""

from __future__ import annotations

import re
import unicodedata

import idna

_ATEXT = r"-A-Za-z0-9#$&'*+/=?^_`{|}~"  # RFC 5322 atext without "%" and "!"
_ASCII_LOCAL = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_UTF8_LOCAL = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ASCII_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_ROUTING = re.compile(r"[%!]")
_WORD_CATEGORIES = {"L", "M", "N", "P", "S"}  # Unicode general categories, first letter


class InvalidAddress(ValueError):
    """The text is not an address we can classify."""


class NeedsUtf8(InvalidAddress):
    """A UTF-8 mailbox where only ASCII is allowed (no SMTPUTF8 in the transaction)."""


def normalise(address: str, *, utf8: bool = True) -> str:
    """The address with its domain lowercased; InvalidAddress when it is not a mailbox.

    `utf8=False` (an SMTP transaction without SMTPUTF8) raises NeedsUtf8 for an address
    that would be valid with it.
    """
    address = address.strip(" \t")
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    local, at, domain = address.rpartition("@")
    if not at or len(address.encode("utf-8", "surrogatepass")) > 254:
        raise InvalidAddress(f"not a valid e-mail address: {address!r}")
    if _ROUTING.search(local):
        raise InvalidAddress(f"not accepted: {address!r} (a local part with '%' or '!' "
                             "could route the mail elsewhere)")
    if _ASCII_LOCAL.fullmatch(local) and _ASCII_DOMAIN.fullmatch(domain) and len(local) <= 64:
        return f"{local}@{domain.lower()}"
    if not (_utf8_local(local) and _utf8_domain(domain)):
        raise InvalidAddress(f"not a valid e-mail address: {address!r}")
    if not utf8:
        raise NeedsUtf8(f"{address!r} is a UTF-8 address: it needs SMTPUTF8 (RFC 6531)")
    return f"{local}@{domain.lower()}"


def _utf8_local(local: str) -> bool:
    return (_UTF8_LOCAL.fullmatch(local) is not None
            and len(local.encode("utf-8", "surrogatepass")) <= 64
            and all(c.isascii() or unicodedata.category(c)[0] in _WORD_CATEGORIES
                    for c in local)
            and unicodedata.is_normalized("NFC", local))


def _utf8_domain(domain: str) -> bool:
    if _ASCII_DOMAIN.fullmatch(domain):
        return True
    try:
        ascii_form = idna.encode(domain.lower(), uts46=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return False
    return _ASCII_DOMAIN.fullmatch(ascii_form) is not None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def ascii_domain(domain: str) -> str:
    """A domain's A-label form (RFC 5891), for comparing with lists written in ASCII."""
    if domain.isascii():
        return domain.lower()
    try:
        return idna.encode(domain.lower(), uts46=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return domain.lower()


def domain_matches(domain: str, entries: frozenset[str] | tuple[str, ...]) -> bool:
    """Exact match, or a subdomain of an entry written with a leading dot.

    A U-label domain matches an entry written in either form.
    """
    domain = domain.lower().rstrip(".")
    forms = {domain, ascii_domain(domain)}
    for form in forms:
        if form in entries:
            return True
        parts = form.split(".")
        if any("." + ".".join(parts[i:]) in entries for i in range(1, len(parts))):
            return True
    return False
