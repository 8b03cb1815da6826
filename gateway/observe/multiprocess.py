"""One /metrics for all worker processes: prometheus-client's multiprocess mode.

Every process of one daemon writes its samples to files in one folder
(PROMETHEUS_MULTIPROC_DIR, which must be set before prometheus_client is imported;
`send-sikkert serve` does so first thing). The supervisor adds them up when scraped:
counters and histograms summed, each gauge by its declared `multiprocess_mode`. The
folder lives in the spool (DIR/.metrics/<supervisor pid>), so a daemon that was killed
leaves it where the next one, holding the spool lock, clears it away.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_root(spool_dir: Path) -> Path:
    return spool_dir / ".metrics"


def prepare(spool_dir: Path) -> Path:
    """Make this daemon's folder and point prometheus-client at it (before importing it)."""
    folder = metrics_root(spool_dir) / str(os.getpid())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[ENV] = str(folder)
    return folder


def folder() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def clear_stale(spool_dir: Path) -> None:
    """Remove the folders of earlier daemons (call only while holding the spool lock)."""
    own = folder()
    root = metrics_root(spool_dir)
    if root.is_dir():
        for path in root.iterdir():
            if own is None or path != own:
                shutil.rmtree(path, ignore_errors=True)


def render() -> bytes:
    """The Prometheus text of every process of this daemon, added up."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    path = folder()
    if path is None:  # one process, no folder: its own registry
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))
    return generate_latest(registry)


def process_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (queue size, SEPO domains...)."""
    from prometheus_client import multiprocess

    path = folder()
    if path is not None:
        multiprocess.mark_process_dead(pid, str(path))


def remove() -> None:
    path = folder()
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
