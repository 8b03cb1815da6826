"""Transient and permanent failures as types, each carrying the SMTP reply it stands for.

RFC 5321 reply codes and RFC 3463 enhanced status codes: a TransientError (4xx) keeps the
recipient queued for a retry; a PermanentError (5xx) ends in a bounce.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: code, enhanced status and text.

    `remote` is true for a reply an SMTP server gave (its Diagnostic-Code is `smtp;`),
    false for one the gateway made itself (a connection failure, a file written).
    """

    code: int
    status: str
    text: str
    remote: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def permanent(self) -> bool:
        return self.code >= 500


class DeliveryError(Exception):
    """A failure that carries the reply to report for it."""

    default = Reply(451, "4.3.0", "temporary failure")

    def __init__(self, text: str | None = None, reply: Reply | None = None) -> None:
        self.reply = reply or Reply(self.default.code, self.default.status,
                                    text or self.default.text)
        super().__init__(str(self.reply))


class TransientError(DeliveryError):
    """Try again later: the recipient stays queued."""


class PermanentError(DeliveryError):
    """Will never work: the recipient is bounced."""

    default = Reply(550, "5.0.0", "permanent failure")
