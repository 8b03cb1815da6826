"""The delivery contract: hand one message to its next hop and report a reply per recipient.

A transport makes one attempt and never retries: the scheduler decides what happens next
from the replies (RFC 5321 4.2: 2xx delivered, 4xx try again later, 5xx bounce), each
carrying an RFC 3463 enhanced status. Failures of the next hop itself (DNS, connection,
timeout, TLS) become a 4xx reply for every recipient, except a domain that does not exist
or refuses all mail (RFC 7505), which is a 5xx. Implementations sit beside this module:
`smtp` (one SMTP session, RFC 5321/3207/3461/6531), `mx` (RFC 5321 5.1 and RFC 7505),
`file` (a folder, for the demo and debugging) and `router` (dispatch by route kind).
What they use sits beside them too: `data` (the DATA writer, dot-stuffing piece by
piece), `pipelining` (RFC 2920 command groups), `connections` (sessions kept per next
hop), `resolver` (the one DNS resolver, with DNSSEC status), `dane` (RFC 7672 TLSA
matching), `mtasts/` (RFC 8461 policies and their cache) and `security` (whether DANE
or MTA-STS vouch for a domain, asked by the classifier).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from gateway.delivery.dane import Tlsa
from gateway.errors import Reply
from gateway.spool.body import MessageData

__all__ = ["Rcpt", "Result", "Route", "Router", "TlsPolicy", "Transport", "parse_route",
           "same_reply"]


@dataclass(frozen=True)
class Route:
    """A next hop: `smtp://host:port`, `mx` or `file:/abs/dir` (CONTRACT "Route forms")."""

    kind: Literal["smtp", "mx", "file"]
    host: str = ""  # smtp: a name or an IP address, IPv6 without brackets
    port: int = 0
    path: Path | None = None  # file

    def __str__(self) -> str:
        if self.kind == "smtp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"smtp://{host}:{self.port}"
        return f"file:{self.path}" if self.kind == "file" else "mx"


_SMTP_ROUTE = re.compile(r"smtp://(?:\[([0-9A-Fa-f:.]+)\]|([^:/\[\]\s]+)):(\d+)")


def parse_route(text: str) -> Route:
    """Parse a route as written in the configuration; ValueError when it is not one."""
    if text == "mx":
        return Route("mx")
    if text.startswith("file:"):
        path = Path(text[5:])
        if not path.is_absolute():
            raise ValueError(f"{text!r}: a file route needs an absolute folder")
        return Route("file", path=path)
    m = _SMTP_ROUTE.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a route (smtp://host:port, mx or file:DIR)")
    port = int(m[3])
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} is out of range")
    return Route("smtp", host=m[1] or m[2], port=port)


@dataclass(frozen=True)
class TlsPolicy:
    """How much TLS a delivery needs, named like Postfix's smtp_tls_security_level.

    For one session with one host:
    `may`: STARTTLS when offered, certificate not checked, plaintext otherwise.
    `encrypt`: STARTTLS required, certificate not checked; never plaintext.
    `verify`: STARTTLS required, chain checked against `ca_file` (None: the system
    store) and the name of the host we connected to; never plaintext.
    `dane` with `tlsa`: STARTTLS required and the peer must match one of the records
    (RFC 7672); never plaintext.

    For a destination, resolved per MX host by the `mx` transport:
    `dane`: each host as its DNSSEC-secure TLSA records say: `dane` with them, `encrypt`
    when none is usable, `may` when there are none or the DNS is not signed.
    `dane-only`: every host must have usable TLSA records; a host without is skipped.
    `mta-sts`: only the MX hosts the recipient domain's MTA-STS policy names, each under
    `verify` with its MX name (RFC 8461 4).
    """

    level: Literal["may", "encrypt", "verify", "dane", "dane-only", "mta-sts"] = "may"
    ca_file: Path | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    tlsa: tuple[Tlsa, ...] = ()  # one host's usable TLSA records, under `dane`

    @property
    def required(self) -> bool:
        """Whether the session must not go on without TLS."""
        return self.level != "may"

    @property
    def per_destination(self) -> bool:
        """Whether only the `mx` transport can carry it out (it needs the DNS per host)."""
        return self.level in ("dane-only", "mta-sts") or (self.level == "dane" and not self.tlsa)


@dataclass(frozen=True)
class Rcpt:
    """One envelope recipient with its RFC 3461 parameters (xtext as received)."""

    address: str
    notify: tuple[str, ...] = ()
    orcpt: str = ""


@dataclass(frozen=True)
class Result:
    """What one delivery attempt did: a reply per recipient address.

    `dsn_relayed` holds the addresses a next hop accepted (2xx) in a session where it
    advertised DSN, so it got our RFC 3461 parameters and takes over notification duty
    (RFC 3461 6.2): no "relayed" or "delivered" DSN of ours for them. An accepted address
    not in it went to a hop without DSN ("relayed"), or was delivered finally by us
    (`file`, "delivered").
    """

    replies: dict[str, Reply]
    tls_failure: bool = False  # TLS was required but could not be had or verified
    peer: str = ""  # the host that gave the last answer, for logs
    dsn_relayed: frozenset[str] = frozenset()
    tls_version: str = ""  # of the session with `peer`, e.g. "TLSv1.3"; "" without TLS
    tls_cipher: str = ""  # e.g. "TLS_AES_256_GCM_SHA384"


class Transport(Protocol):
    """Delivers one message to the recipients of one next hop, once."""

    async def deliver(self, route: Route, domain: str, sender: str, rcpts: Sequence[Rcpt],
                      data: MessageData, tls: TlsPolicy, *, queue_id: str, ret: str = "",
                      envid: str = "", smtputf8: bool = False) -> Result:
        """Try once; `domain` is the recipient domain all `rcpts` share."""
        ...


def same_reply(rcpts: Sequence[Rcpt], reply: Reply, *, tls_failure: bool = False,
               peer: str = "") -> Result:
    """A result giving every recipient the same reply (the next hop failed as a whole)."""
    return Result({r.address: reply for r in rcpts}, tls_failure, peer)


# The implementations import the contract above, so the router comes last.
from gateway.delivery.router import Router  # noqa: E402
