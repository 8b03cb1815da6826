"""The MTA-STS policy cache as files: one small JSON file per domain, in the spool's folder.

Written like the spool: a temporary file, fsync, rename, so a crash leaves the old
policy or the new one, never half of either; every process of the node sees the same
files. A file this version cannot read is logged and ignored (the policy is fetched
again); a folder that cannot be read at all makes the store unavailable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

from gateway.delivery.mtasts import CachedPolicy, StoreUnavailable

log = logging.getLogger(__name__)


class FilePolicyStore:
    """PolicyStore in `folder` (created on the first save)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, domain: str) -> Path:
        return self.folder / (quote(domain.lower(), safe=".-") + ".json")

    async def load(self, domain: str) -> CachedPolicy | None:
        """The saved policy, or None; StoreUnavailable when the file cannot be read."""
        return await asyncio.to_thread(self._load, domain)

    def _load(self, domain: str) -> CachedPolicy | None:
        path = self._path(domain)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreUnavailable(f"cannot read {path}: {e.strerror}") from None
        try:
            entry = CachedPolicy.from_json(json.loads(text))
        except ValueError as e:  # json.JSONDecodeError is one too
            log.warning("ignoring the unreadable MTA-STS cache file %s: %s", path, e)
            return None
        return entry if entry.domain == domain.lower() else None

    async def save(self, entry: CachedPolicy) -> None:
        """Replace the domain's file atomically; OSError when the folder is not writable."""
        await asyncio.to_thread(self._save, entry)

    def _save(self, entry: CachedPolicy) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(entry.domain)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry.to_json(), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        folder = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
