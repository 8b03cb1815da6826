"""How a commit round makes the message files it wrote durable before their 250.

`filesystem` (the default): one syncfs(2) of the spool's filesystem per round, however
many messages the round holds: one journal commit and one cache flush, where an fsync per
file costs one each (rounds of ten 5 KB messages on the benchmark's disk: 1.1 ms against
2.6 to 3.1 ms). It also waits for every other dirty file on that filesystem, so it suits a
spool on a filesystem of its own (a volume per pod, /var/spool on its own disk).
`files`: an fsync per message file, as Postfix does, for a spool that shares a busy
filesystem. syncfs reports writeback errors (to a descriptor opened before the writes)
only since Linux 5.8; an older kernel, or a C library without syncfs, gets `files`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import re

log = logging.getLogger(__name__)

FILESYSTEM = "filesystem"
FILES = "files"


def _syncfs(release: str) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """libc's syncfs, on a kernel (`release`) that reports writeback errors through it;
    else None."""
    found = re.match(r"(\d+)\.(\d+)", release)
    if found is None or (int(found[1]), int(found[2])) < (5, 8):
        return None
    return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)


_SYNCFS = _syncfs(platform.release())


def effective(mode: str) -> str:
    """The mode a spool gets on this machine for `spool.sync` = `mode`."""
    return FILESYSTEM if mode == FILESYSTEM and _SYNCFS is not None else FILES


def sync(mode: str, folder_fd: int, fds: list[int], failures: list[OSError | None],
         opened_before: frozenset[int] = frozenset()) -> None:
    """Make every written file durable, recording a failure in `failures` for each one
    that is not. `folder_fd` must have been opened before the files were written: syncfs
    reports only the writeback errors that came after that. The files at the indexes in
    `opened_before` (a large body streamed into its file as it arrived) may have been
    written back, and failed, before it: they are fsynced as well, which after the syncfs
    costs little and reports what only their own descriptors can."""
    if mode == FILESYSTEM and _SYNCFS is not None:
        if _SYNCFS(folder_fd) != 0:
            err = ctypes.get_errno()
            error = OSError(err, f"syncfs of the spool: {os.strerror(err)}")
            failures[:] = [failure or error for failure in failures]
            return
        each = sorted(opened_before)
    else:
        each = list(range(len(fds)))
    for i in each:
        if failures[i] is None:
            try:
                os.fsync(fds[i])
            except OSError as e:
                failures[i] = e
