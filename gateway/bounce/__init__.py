"""Bounces: RFC 3464 delivery status notifications built from recipient outcomes.

`dsn` turns a list of Failures into the report's bytes (CONTRACT "Bounces (DSN)");
`report` spools it from the null sender back to the original sender.
"""

from gateway.bounce.dsn import Failure, Kind, build_dsn

__all__ = ["Failure", "Kind", "build_dsn"]
