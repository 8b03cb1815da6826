"""What `send-sikkert queue` shows and does: listing, one message's details, deletion.

Used by the daemon's queue endpoints and, when no daemon runs, by the commands directly
on the spool; a deletion a crash cut short is settled by the daemon's next start, as
every DSN owed is (bounce/owed.py).
"""

from __future__ import annotations

import time
from typing import Any

from gateway.bounce.owed import owe, owes_dsn, settle
from gateway.config import Config
from gateway.model import Envelope, State
from gateway.spool.store import Spool, SpoolError

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


async def delete(spool: Spool, config: Config, env: Envelope) -> list[Envelope]:
    """Drop a message; its pending recipients are reported to the sender in a failed DSN.

    The deletion is on disk before the DSN is spooled (bounce/owed.py): a crash then
    leaves a finished message that still owes its DSN, settled at the next start, never
    one delivered after its sender was told it was deleted. Returns the DSN to deliver;
    SpoolError when it could not be spooled (the next start spools it).
    """
    for r in env.recipients:
        if not r.state.final:
            r.state, r.status, r.diagnostic = State.BOUNCED, "5.0.0", DELETED
            owe(r, "deleted")
    if owes_dsn(env):
        await spool.update(env)
    dsns = await settle(spool, config, env)
    if owes_dsn(env):
        raise SpoolError(f"{env.id} is deleted, but the DSN saying so could not be queued; "
                         "the daemon's next start queues it")
    return dsns
