"""This process's id, without a system call each time it is asked for.

glibc no longer caches getpid(), and the mail log (every line names the pid) and
prometheus-client's multiprocess values (every update checks it, to notice a fork) ask
for it about a dozen times per message. The id is read once and again in the child of
every fork, which is the only time it changes.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def current() -> int:
    return _pid
