"""Multiprocess metrics ask `observe.pid` for the process id: a fork still gets its own
values, and the totals add up across processes (prometheus-client's own rule)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import os
from gateway.observe import metrics, multiprocess
metrics.messages_received.labels(tagged="false").inc(2)
metrics.spool_write_seconds.observe(0.002)
child = os.fork()
if child == 0:
    metrics.messages_received.labels(tagged="false").inc()
    metrics.spool_write_seconds.observe(0.002)
    os._exit(0)
os.waitpid(child, 0)
metrics.messages_received.labels(tagged="false").inc()
print(os.getpid(), child)
print(multiprocess.render().decode())
"""


def test_a_forked_process_writes_its_own_values(tmp_path: Path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    parent, child = done.stdout.split("\n", 1)[0].split()
    assert {p.name for p in tmp_path.iterdir()} >= {
        f"counter_{parent}.db", f"counter_{child}.db",
        f"histogram_{parent}.db", f"histogram_{child}.db"}
    text = done.stdout
    assert 'sendsikkert_messages_received_total{tagged="false"} 4.0' in text
    assert "sendsikkert_spool_write_seconds_count 2.0" in text


def test_a_child_is_looked_up_once_and_is_the_labelled_one():
    from gateway.observe import metrics

    found = metrics.child(metrics.recipients, "plain", "delivered")
    assert found is metrics.recipients.labels(**{"class": "plain", "outcome": "delivered"})
    assert metrics.child(metrics.recipients, "plain", "delivered") is found
    assert metrics.child(metrics.recipients, "plain", "deferred") is not found
