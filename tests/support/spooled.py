"""A file on disk as delivery sees a large spooled message (`gateway.spool.body.Spooled`)."""

from __future__ import annotations

from pathlib import Path

from gateway.spool.body import Spooled, read_spooled


def open_spooled(path: Path, size: int | None = None) -> Spooled | None:
    """The message in the first `size` bytes (None: all) of the file at `path`."""
    with open(path, "rb") as f:
        return read_spooled(f, path, path.stat().st_size if size is None else size)
