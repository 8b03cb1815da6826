"""Bounces: RFC 3464 delivery status notifications built from recipient outcomes.

`dsn` turns a list of Notices (failed, delayed, delivered, relayed) into the report's
bytes (CONTRACT "Bounces (DSN)"); `report` spools it from the null sender back to the
original sender; `owed` keeps the outcome on disk before its DSN is spooled, so a crash
between the two never delivers what the sender was told failed.
"""

from gateway.bounce.dsn import Action, Kind, Notice, build_dsn

__all__ = ["Action", "Kind", "Notice", "build_dsn"]
