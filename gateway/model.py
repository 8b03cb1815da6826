"""The values that travel along the pipeline: classes, decisions and recipient states.

Envelope and per-recipient state are what the spool stores (as versioned JSON); a
Decision is what the classifier says about one address.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal


class RecipientClass(enum.StrEnum):
    """How a recipient of tagged mail can be reached safely (CONTRACT "Classes")."""

    INTERNAL = "internal"
    TUNNEL = "tunnel"
    SMIME = "smime"
    UNSAFE = "unsafe"
    UNKNOWN = "unknown"
    PLAIN = "plain"  # untagged mail: not classified, relayed unchanged

    @property
    def safe(self) -> bool:
        return self in (RecipientClass.INTERNAL, RecipientClass.TUNNEL, RecipientClass.SMIME)

    @property
    def colour(self) -> str:
        return _COLOURS[self]

    @property
    def label(self) -> str:
        return _LABELS[self]


_COLOURS = {
    RecipientClass.INTERNAL: "turkis",
    RecipientClass.TUNNEL: "grøn",
    RecipientClass.SMIME: "grøn",
    RecipientClass.UNSAFE: "rød",
    RecipientClass.UNKNOWN: "grå",
    RecipientClass.PLAIN: "",
}
_LABELS = {
    RecipientClass.INTERNAL: "Intern adresse",
    RecipientClass.TUNNEL: "Tunnelkryptering",
    RecipientClass.SMIME: "Signeret og krypteret",
    RecipientClass.UNSAFE: "Sikker mail er ikke mulig",
    RecipientClass.UNKNOWN: "Kan ikke afgøres lige nu",
    RecipientClass.PLAIN: "",
}


@dataclass(frozen=True)
class CertificateInfo:
    """What `check` shows about the certificate chosen for a recipient."""

    subject: str
    serial: str
    not_after: str  # ISO 8601, UTC

    def describe(self) -> str:
        return f"{self.subject}, serial {self.serial}, expires {self.not_after[:10]}"


@dataclass(frozen=True)
class TransportCheck:
    """What DANE or MTA-STS says of a recipient domain (CONTRACT "DANE and MTA-STS").

    `secure`: `mechanism` vouches for verified TLS to the domain's mail hosts;
    `insecure`: neither does (the reason says why); `failed`: a lookup failed, so the
    class is `unknown`.
    """

    result: Literal["secure", "insecure", "failed"]
    mechanism: Literal["dane", "mta_sts", ""]
    reason: str


@dataclass(frozen=True)
class Decision:
    """The classifier's answer for one address; the same for daemon, CLI and API."""

    address: str
    cls: RecipientClass
    reason: str
    certificate: CertificateInfo | None = None
    # The chosen recipient certificate (DER) for `smime`; not part of the JSON answer.
    certificate_der: bytes | None = field(default=None, repr=False, compare=False)
    # Who vouches for a `tunnel`: "sepo", "dane" or "mta_sts"; delivery's TLS level follows.
    mechanism: str = ""

    def as_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "address": self.address,
            "class": str(self.cls),
            "safe": self.cls.safe,
            "colour": self.cls.colour,
            "label": self.cls.label,
            "reason": self.reason,
        }
        if self.certificate:
            result["certificate"] = asdict(self.certificate)
        if self.mechanism:
            result["mechanism"] = self.mechanism
        return result


class State(enum.StrEnum):
    """Where one recipient of a queued message stands (CONTRACT `queue list`)."""

    QUEUED = "queued"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCED = "bounced"

    @property
    def final(self) -> bool:
        return self in (State.DELIVERED, State.BOUNCED)


@dataclass
class RecipientState:
    """One recipient's record in the spool."""

    address: str
    state: State = State.QUEUED
    cls: str = ""
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    status: str = ""  # enhanced status of the final outcome, for the DSN
    diagnostic: str = ""  # the remote reply or our reason, for Diagnostic-Code
    notify: tuple[str, ...] = ()  # RFC 3461 NOTIFY; empty: the default (FAILURE, DELAY)
    orcpt: str = ""  # RFC 3461 ORCPT, "rfc822;addr" as received
    delay_warned: bool = False
    # The kind of news (bounce/dsn.py Kind) the sender is owed a DSN of, "" for none: the
    # outcome is on disk before its DSN is spooled (bounce/owed.py). Records written
    # before it load as ""; true, from a version that owed only deletions, as "deleted".
    dsn_owed: str = ""

    def wants(self, kind: str) -> bool:
        """Whether the sender asked for a DSN of this kind (FAILURE, DELAY, SUCCESS)."""
        if not self.notify:
            return kind in ("FAILURE", "DELAY")
        return kind in self.notify


@dataclass(frozen=True)
class DlpOutcome:
    """What the DLP scan decided for a message at its first attempt (CONTRACT "Data-loss
    prevention"), kept in the spool so that every retry acts the same way."""

    mode: str  # dlp.cpr when the scan ran: "secure", "block", "warn" or "off"
    found: tuple[tuple[str, str], ...] = ()  # (where, attachment name) of each finding's place
    gaps: tuple[str, ...] = ()  # what could not be read in full, for `queue show`

    @property
    def action(self) -> str:
        """The mode, when a CPR number was found and the mode acts; "" otherwise."""
        return self.mode if self.found and self.mode != "off" else ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DlpOutcome:
        return cls(data["mode"], tuple((w, n) for w, n in data.get("found", ())),
                   tuple(data.get("gaps", ())))


@dataclass
class Envelope:
    """One spooled message's envelope and per-recipient state."""

    id: str
    sender: str  # "" for the null sender of a DSN
    recipients: list[RecipientState]
    received: float
    client: str = ""
    helo: str = ""
    ret: str = ""  # RFC 3461 RET: FULL or HDRS
    envid: str = ""  # RFC 3461 ENVID
    smtputf8: bool = False
    # Accepted from a client outside smtp.relay_networks (inbound mail, CONTRACT "Inbound"):
    # never treated as tagged, never DLP-scanned. Records written before it load as False.
    from_outside: bool = False
    # Decided at the first attempt of an untagged message; None until then, and always for
    # tagged and inbound mail. Records written before it load as None (scanned when next due).
    dlp: DlpOutcome | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return all(r.state.final for r in self.recipients)

    def to_json(self) -> dict[str, Any]:
        # Field by field: asdict()'s deep copies cost more than encoding the result.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["recipients"] = [{**vars(r), "state": str(r.state), "notify": list(r.notify)}
                              for r in self.recipients]
        data["dlp"] = asdict(self.dlp) if self.dlp is not None else None
        data["version"] = 1
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Envelope:
        if data.get("version") != 1:
            raise ValueError(f"unknown spool record version {data.get('version')!r}")
        data = dict(data)
        data.pop("version")
        recipients = [
            RecipientState(**{**r, "state": State(r["state"]), "notify": tuple(r["notify"]),
                              "dsn_owed": _owed(r.get("dsn_owed", ""))})
            for r in data.pop("recipients")
        ]
        dlp = data.pop("dlp", None)
        return cls(recipients=recipients, dlp=DlpOutcome.from_json(dlp) if dlp else None,
                   **data)


def _owed(value: str | bool) -> str:
    """A record's `dsn_owed`: true and false come from when only a deletion owed one."""
    if isinstance(value, bool):
        return "deleted" if value else ""
    return value
