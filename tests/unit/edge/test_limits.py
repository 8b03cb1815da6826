"""The connection caps of the edge: in all and per client, released when a session ends."""

from __future__ import annotations

import os

from gateway.edge.counts import SharedCounts, create_table
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
    assert limits.counts.total() == 0
    assert all(limits.counts.of(c) == 0 for c in ("10.0.0.1", "10.0.0.2", "10.0.0.3"))


def test_workers_sharing_a_table_see_each_other_s_connections():
    fd = create_table(2)
    try:
        first = ConnectionLimits("gw.test", 3, 2, SharedCounts(fd, 2, 0))
        second = ConnectionLimits("gw.test", 3, 2, SharedCounts(fd, 2, 1))
        assert first.admit("10.0.0.1") is None and second.admit("10.0.0.1") is None
        assert second.admit("10.0.0.1").startswith("421 4.7.0")  # two already, in all
        assert first.admit("10.0.0.2") is None
        assert second.admit("10.0.0.3").startswith("421 4.7.0")  # three in all
        SharedCounts(fd, 2, 0).clear_row()  # the first worker died with its connections
        assert second.admit("10.0.0.3") is None
    finally:
        os.close(fd)
