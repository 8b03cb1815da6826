"""What `send-sikkert queue` shows and does: listing, one message's details, deletion.

Used by the daemon's queue endpoints and, when no daemon runs, by the commands directly
on the spool; a deletion a crash cut short is settled by the daemon's next start.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.bounce.dsn import Notice
from gateway.bounce.report import spool_dsn
from gateway.config import Config
from gateway.model import Envelope, State
from gateway.spool.store import Spool

DELETED = "x-send-sikkert; deleted from the queue by the postmaster"  # Diagnostic-Code


class Busy(Exception):
    """The message is being delivered right now; try again in a moment."""


def listing(envelopes: list[Envelope], now: float | None = None) -> dict[str, Any]:
    """CONTRACT `queue list --json`: messages with a recipient still pending."""
    now = time.time() if now is None else now
    messages = []
    for env in sorted(envelopes, key=lambda e: e.received):
        if env.done:
            continue
        pending = [r for r in env.recipients if not r.state.final]
        messages.append({
            "id": env.id,
            "sender": env.sender,
            "age_seconds": round(now - env.received, 1),
            "attempts": max((r.attempts for r in env.recipients), default=0),
            "next_attempt": min((r.next_attempt for r in pending), default=0.0),
            "recipients": [
                {"address": r.address, "class": r.cls, "state": str(r.state),
                 "last_error": r.last_error}
                for r in env.recipients
            ],
        })
    return {"messages": messages}


def describe(env: Envelope) -> str:
    """`queue show`: the envelope, each recipient and the history, for a person to read."""
    lines = [
        f"id:        {env.id}",
        f"sender:    <{env.sender}>",
        f"received:  {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(env.received))}",
        f"client:    {env.client} ({env.helo})",
    ]
    if env.envid or env.ret:
        lines.append(f"dsn:       ENVID={env.envid or '-'} RET={env.ret or '-'}")
    if env.dlp is not None and (env.dlp.found or env.dlp.gaps):
        found = ", ".join(f"{where} {name}".strip() for where, name in env.dlp.found)
        lines.append(f"dlp:       dlp.cpr = {env.dlp.mode}; CPR number found in: {found or '-'}")
        lines += [f"           not read in full: {gap}" for gap in env.dlp.gaps]
    lines.append("recipients:")
    for r in env.recipients:
        detail = r.last_error or r.diagnostic
        lines.append(f"  <{r.address}> {r.state} class={r.cls or '-'} attempts={r.attempts}"
                     + (f": {detail}" if detail else ""))
    if env.history:
        lines.append("history:")
        for h in env.history:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["time"]))
            lines.append(f"  {when} <{h['address']}> {h['state']} {h.get('detail', '')}".rstrip())
    return "\n".join(lines)


async def delete(spool: Spool, config: Config, env: Envelope) -> Envelope | None:
    """Drop a message; its pending recipients are reported to the sender in a failed DSN.

    The deletion is on disk before the DSN is spooled: a crash after that leaves a
    finished message that still owes its DSN (`settle` at the next start), never one
    delivered after its sender was told it was deleted. A crash after the DSN was
    spooled may spool it again, which RFC 5321 6.1 prefers to losing it.
    """
    pending = [r for r in env.recipients if not r.state.final]
    for r in pending:
        r.state, r.status, r.diagnostic = State.BOUNCED, "5.0.0", DELETED
        r.dsn_owed = True
    if pending:
        await spool.update(env)
    return await settle(spool, config, env)


def owes_dsn(env: Envelope) -> bool:
    """Whether a message was deleted and its sender may not have been told yet."""
    return any(r.dsn_owed for r in env.recipients)


async def settle(spool: Spool, config: Config, env: Envelope) -> Envelope | None:
    """Spool the DSN a deleted message owes its sender, then remove the message."""
    failures = [Notice(address=r.address, orcpt=r.orcpt, action="failed", status=r.status,
                       diagnostic=r.diagnostic, kind="deleted")
                for r in env.recipients if r.dsn_owed]
    dsn = None
    if failures and any(r.wants("FAILURE") for r in env.recipients):
        data = await spool.body(env.id)
        dsn = await spool_dsn(spool, config, env, data, failures)
    await spool.remove(env.id)
    return dsn
