"""CPU time and memory of a process tree, read from /proc (Linux).

CPU: utime+stime of every live process in the tree plus cutime+cstime (children that
exited and were reaped), so short-lived helpers (Postfix's smtpd, cleanup) are counted.
Memory: the tree's proportional set size (Pss: shared pages split between the processes
that map them, so fifty Postfix processes do not count libc fifty times) is sampled
while a case runs, and its peak reported. Growth: each process's peak RSS is reset
(clear_refs 5) before a case and read (VmHWM) after it; the largest growth of one
process is what holding a big message costs.
"""

from __future__ import annotations

import contextlib
import os
import threading

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, cpu seconds including reaped children) of one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / _TICK


def tree(root: int) -> dict[int, float]:
    """Every process below (and including) `root`, with its cpu seconds."""
    info: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                info[int(name)] = stat
    members = {root} if root in info else set()
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in info.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return {pid: info[pid][1] for pid in members}


def cpu_seconds(root: int) -> float:
    return sum(tree(root).values())


def _status(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peaks(root: int) -> dict[int, int]:
    """Reset every process's peak RSS; returns each one's RSS now (bytes)."""
    before = {}
    for pid in tree(root):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        before[pid] = _status(pid, "VmRSS")
    return before


def growth(root: int, before: dict[int, int]) -> int:
    """The largest growth of one process's peak RSS over its RSS at reset_peaks (bytes)."""
    return max((_status(pid, "VmHWM") - before.get(pid, 0) for pid in tree(root)), default=0)


def pss(root: int) -> int:
    """The tree's proportional set size now (bytes)."""
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


class PeakSampler:
    """Samples the tree's Pss in a thread until stopped; `peak` is the largest seen."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root, self.interval, self.peak = root, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, pss(self.root))
            if self._stop.wait(self.interval):
                return
