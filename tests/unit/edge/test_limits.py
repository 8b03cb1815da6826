"""The connection caps of the edge: in all and per client, released when a session ends."""

from __future__ import annotations

from gateway.edge.limits import ConnectionLimits


def test_caps_in_all_and_per_client():
    limits = ConnectionLimits("gw.test", max_connections=3, max_per_client=2)
    assert limits.admit("10.0.0.1") is None and limits.admit("10.0.0.1") is None
    refusal = limits.admit("10.0.0.1")
    assert refusal is not None and refusal.startswith("421 4.7.0 gw.test ")
    assert limits.admit("10.0.0.2") is None
    assert limits.admit("10.0.0.3").startswith("421 4.7.0")  # the total is reached
    limits.release("10.0.0.1")
    assert limits.admit("10.0.0.3") is None
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        limits.release(client)
    assert limits.total == 0 and not limits.open
