"""aiosmtpd's SMTP protocol with the DSN extension (RFC 3461) added.

aiosmtpd refuses MAIL/RCPT parameters it does not know, so RET/ENVID and NOTIFY/ORCPT are
taken off the command line here, checked, kept on the session, and the rest is handed to
aiosmtpd unchanged. The handler's EHLO hook advertises DSN.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP

_PARAM = re.compile(r"\s+([A-Za-z0-9-]+)(?:=(\S*))?")
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
NOTIFY_VALUES = {"SUCCESS", "FAILURE", "DELAY"}


class DsnSyntaxError(ValueError):
    """A DSN parameter that breaks RFC 3461."""


@dataclass
class DsnParams:
    """RFC 3461 parameters of the transaction in progress."""

    ret: str = ""
    envid: str = ""
    # address -> (NOTIFY, ORCPT)
    rcpt: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)


def take_params(arg: str, names: set[str]) -> tuple[str, dict[str, str]]:
    """Split the named ESMTP parameters (case-kept values) off a MAIL/RCPT argument."""
    head, sep, tail = arg.partition(">")
    if not sep:
        return arg, {}
    taken: dict[str, str] = {}
    kept = []
    for m in _PARAM.finditer(tail):
        name = m[1].upper()
        if name in names:
            if name in taken:
                raise DsnSyntaxError(f"{name} given twice")
            taken[name] = m[2] or ""
        else:
            kept.append(m[0])
    return head + sep + "".join(kept), taken


def check_notify(value: str) -> tuple[str, ...]:
    items = tuple(v.upper() for v in value.split(","))
    if items == ("NEVER",):
        return items
    if not items or not set(items) <= NOTIFY_VALUES:
        raise DsnSyntaxError("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY")
    return items


def check_xtext(name: str, value: str, limit: int = 500) -> str:
    if not value or len(value) > limit or not _XTEXT.fullmatch(value):
        raise DsnSyntaxError(f"{name} must be xtext")
    return value


class GatewaySMTP(SMTP):
    """SMTP with RFC 3461 parameters; the handler reads them from `self.dsn`."""

    def __init__(self, *args, **kwargs) -> None:
        self.dsn = DsnParams()
        self.pending_rcpt: tuple[tuple[str, ...], str] = ((), "")
        super().__init__(*args, **kwargs)

    def _set_rset_state(self) -> None:
        super()._set_rset_state()
        self.dsn = DsnParams()

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()
        self.dsn = DsnParams()

    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg is not None and self.session is not None and self.session.extended_smtp:
            try:
                arg, params = take_params(arg, {"RET", "ENVID"})
                ret = params.get("RET", "").upper()
                if "RET" in params and ret not in ("FULL", "HDRS"):
                    raise DsnSyntaxError("RET must be FULL or HDRS")
                envid = check_xtext("ENVID", params["ENVID"], 100) if "ENVID" in params else ""
            except DsnSyntaxError as e:
                await self.push(f"501 5.5.4 {e}")
                return
            await super().smtp_MAIL(arg)
            if self.envelope is not None and self.envelope.mail_from is not None:
                self.dsn.ret, self.dsn.envid = ret, envid
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.pending_rcpt = ((), "")
        if arg is not None and self.session is not None and self.session.extended_smtp:
            try:
                arg, params = take_params(arg, {"NOTIFY", "ORCPT"})
                notify = check_notify(params["NOTIFY"]) if "NOTIFY" in params else ()
                orcpt = params.get("ORCPT", "")
                if orcpt:
                    addr_type, sep, addr = orcpt.partition(";")
                    if not sep or not addr_type:
                        raise DsnSyntaxError("ORCPT must be addr-type;xtext")
                    check_xtext("ORCPT", addr)
            except DsnSyntaxError as e:
                await self.push(f"501 5.5.4 {e}")
                return
            self.pending_rcpt = (notify, orcpt)
        await super().smtp_RCPT(arg)
