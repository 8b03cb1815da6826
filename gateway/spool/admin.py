"""What `send-sikkert queue` shows and does: listing, one message's details, deletion.

Used by the daemon's queue endpoints and, when no daemon runs, by the commands directly
on the spool.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.bounce.dsn import Notice
from gateway.bounce.report import spool_dsn
from gateway.config import Config
from gateway.model import Envelope, State
from gateway.spool.store import Spool


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
    """Drop a message; its pending recipients are reported to the sender in a failed DSN."""
    failures = []
    for r in env.recipients:
        if r.state.final:
            continue
        r.state, r.status = State.BOUNCED, "5.0.0"
        r.diagnostic = "x-send-sikkert; deleted from the queue by the postmaster"
        failures.append(Notice(address=r.address, orcpt=r.orcpt, action="failed",
                               status="5.0.0", diagnostic=r.diagnostic, kind="deleted"))
    dsn = None
    if failures and any(r.wants("FAILURE") for r in env.recipients):
        data = await spool.body(env.id)
        dsn = await spool_dsn(spool, config, env, data, failures)
    await spool.remove(env.id)
    return dsn
