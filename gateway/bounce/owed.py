"""DSNs owed: a recipient's outcome is on disk before the DSN that tells its sender of it.

A bounce, a delay warning or a success the sender asked for (RFC 3461 NOTIFY, each
recipient's own: NEVER hears nothing), and a deletion by the postmaster, mark the
recipient `dsn_owed` with the kind of news (`owe`); the state is written, then the DSN
spooled (`pay`), then the debt cleared with the message's next write or its removal.
A kill -9 before the state is written leaves the old state and no DSN: the recipient is
tried again, and its sender was told nothing. One after it leaves the debt, which the
next start pays (`settle`) before the message is scheduled: perhaps a second DSN, which
RFC 5321 6.1 prefers to none, and never a recipient delivered once its sender may hold a
DSN saying it failed, for that failure was final on disk first.
"""

from __future__ import annotations

import logging

from gateway.bounce.dsn import Action, Kind, Notice
from gateway.bounce.report import spool_dsn
from gateway.config import Config
from gateway.model import Envelope, RecipientState
from gateway.spool.store import Spool, SpoolError

log = logging.getLogger(__name__)

# What each kind of news is, and which NOTIFY keyword asks for it; every other kind is
# a failure.
_ACTIONS: dict[str, Action] = {"delayed": "delayed", "delivered": "delivered",
                               "relayed": "relayed"}
_NOTIFY = {"failed": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS",
           "relayed": "SUCCESS"}
_ONE_DSN_EACH: tuple[tuple[Action, ...], ...] = (("failed",), ("delayed",),
                                                ("delivered", "relayed"))


def action_of(kind: str) -> Action:
    """The DSN Action a kind of news is reported under (RFC 3464 2.3.3)."""
    return _ACTIONS.get(kind, "failed")


def owe(r: RecipientState, kind: Kind) -> None:
    """Owe the sender a DSN of this news about `r`, if its NOTIFY asks for that kind."""
    if r.wants(_NOTIFY[action_of(kind)]):
        r.dsn_owed = kind


def owes_dsn(env: Envelope) -> bool:
    """Whether the sender may not have been told yet of an outcome on record."""
    return any(r.dsn_owed for r in env.recipients)


def notice(config: Config, env: Envelope, r: RecipientState) -> Notice:
    """What the DSN says of `r`, from its record alone: the same before and after a crash."""
    action = action_of(r.dsn_owed)
    if action == "delayed":
        return Notice(address=r.address, orcpt=r.orcpt, action=action,
                      status=r.status or "4.0.0", diagnostic=f"x-send-sikkert; {r.last_error}",
                      kind="delayed", will_retry_until=env.received + config.queue.max_age)
    return Notice(address=r.address, orcpt=r.orcpt, action=action, status=r.status,
                  diagnostic=r.diagnostic, kind=r.dsn_owed,
                  found_in=env.dlp.found if env.dlp is not None else ())


async def pay(spool: Spool, config: Config, env: Envelope,
              head: bytes) -> tuple[list[Envelope], list[RecipientState]]:
    """Spool one DSN per kind of news owed, quoting `head`, and clear each debt paid.

    Returns the DSNs to deliver, and the recipients whose DSN could not be spooled (their
    debt stands). Never raises: one DSN that cannot be made must not stop the others.
    """
    dsns: list[Envelope] = []
    unpaid: list[RecipientState] = []
    for actions in _ONE_DSN_EACH:
        owed = [r for r in env.recipients if r.dsn_owed and action_of(r.dsn_owed) in actions]
        if not owed:
            continue
        try:
            dsn = await spool_dsn(spool, config, env, head,
                                  [notice(config, env, r) for r in owed])
        except SpoolError as e:
            log.error("%s: cannot queue the %s DSN: %s", env.id, actions[0], e)
            unpaid += owed
            continue
        except Exception:
            log.exception("%s: cannot build the %s DSN", env.id, actions[0])
            unpaid += owed
            continue
        for r in owed:
            r.dsn_owed = ""
        if dsn is not None:
            dsns.append(dsn)
    return dsns, unpaid


async def settle(spool: Spool, config: Config, env: Envelope) -> list[Envelope]:
    """Pay what a spooled message owes, then remove it when finished or record it paid.

    A debt that cannot be paid stays on disk (`owes_dsn` still holds), for the next try.
    """
    dsns, unpaid = await pay(spool, config, env, await spool.body(env.id))
    if unpaid:
        return dsns
    if env.done:
        await spool.remove(env.id)
    else:
        await spool.update(env)
    return dsns
