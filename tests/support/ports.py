"""Loopback TCP ports for tests, reserved against every other test process on the machine.

A port got by binding port 0 and closing the socket comes from the kernel's ephemeral
range, which every outgoing connection and every other port-0 server draws from too: by
the time the daemon under test binds it, another xdist worker's sink may hold it, and the
test fails with "address in use" or an HTTP client reading an SMTP banner. `free_port()`
hands out ports from outside the ephemeral range instead, and reserves each one with a
one-byte POSIX record lock at the port's offset in one shared file (`LOCK_FILE`): every
test process on the machine (xdist workers, other checkouts' runs) skips ports another
holds. A process keeps its last `KEEP` ports, and all of them until it exits, so a port
meant to stay closed ("connection refused" tests) stays closed for its test.

`fixed_ports(2525, 8025)` takes the same locks, waiting, for a test that must use ports it
cannot choose (the demo's configuration), so two such tests never overlap.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import socket
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = Path(tempfile.gettempdir()) / "send-sikkert-test-ports.lock"
KEEP = 1000  # ports a process holds at most; the oldest is released past that
LOWEST = 10000  # below: well-known and registered services (2525, 8025, 5432, ...)


class PortsExhausted(RuntimeError):
    """Every candidate port is held by a test process or in use."""


def _ranges() -> list[range]:
    """The ports from LOWEST up to 65535 outside the kernel's ephemeral range."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return [r for r in (range(LOWEST, low), range(high + 1, 65536)) if len(r)]


def _bindable(host: str, port: int) -> bool:
    """Nothing holds `port` on `host` nor on its family's wildcard address, not even a
    connection in TIME_WAIT (no SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    for address in dict.fromkeys((host, wildcard)):
        with socket.socket(family) as s:
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


class _Reservations:
    """This process's held ports and the one descriptor its locks hang on.

    POSIX record locks belong to the process and vanish when it closes *any* descriptor
    of the file, so the file is opened once per process and never closed.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._pid = 0
        self._held: OrderedDict[int, None] = OrderedDict()
        self._fixed: set[int] = set()
        self._candidates: list[int] = []

    def _file(self) -> int:
        if self._pid != os.getpid():  # a forked child holds none of its parent's locks
            self._fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
            self._pid = os.getpid()
            self._held.clear()
            self._fixed.clear()
        return self._fd

    def _lock(self, port: int, wait: bool) -> bool:
        flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.lockf(self._file(), flags, 1, port)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
        return True

    def _unlock(self, port: int) -> None:
        fcntl.lockf(self._file(), fcntl.LOCK_UN, 1, port)

    def take(self, host: str) -> int:
        candidates = self._candidates = self._candidates or [p for r in _ranges() for p in r]
        start = random.randrange(len(candidates))  # processes start apart, rarely meet
        for port in candidates[start:] + candidates[:start]:
            if port in self._held or port in self._fixed or not self._lock(port, False):
                continue
            if not _bindable(host, port):
                self._unlock(port)
                continue
            self._held[port] = None
            while len(self._held) > KEEP:
                self._unlock(self._held.popitem(last=False)[0])
            return port
        raise PortsExhausted(f"no free port on {host}: all {len(candidates)} candidates are "
                             f"held by test processes ({LOCK_FILE}) or in use")

    @contextlib.contextmanager
    def fixed(self, ports: tuple[int, ...], host: str, timeout: float) -> Iterator[None]:
        deadline = time.monotonic() + timeout
        taken: list[int] = []
        try:
            for port in sorted(ports):  # one order for every process: no deadlock
                while not self._lock(port, False):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"port {port} stayed reserved by another test "
                                           f"process for {timeout:.0f} s ({LOCK_FILE})")
                    time.sleep(0.1)
                taken.append(port)
                self._fixed.add(port)
                while not _bindable(host, port):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{host}:{port} is in use by a process that "
                                           f"is not a test: stop it (ss -ltnp)")
                    time.sleep(0.1)
            yield
        finally:
            for port in taken:
                self._fixed.discard(port)
                if port not in self._held:
                    self._unlock(port)


_reservations = _Reservations()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on, reserved for this process (see the module docstring).

    For a server the test starts, or for "connection refused" tests.
    """
    return _reservations.take(host)


def fixed_ports(*ports: int, host: str = "127.0.0.1",
                timeout: float = 300) -> contextlib.AbstractContextManager[None]:
    """Hold `ports`, waiting while another test process holds them, until the block ends."""
    return _reservations.fixed(ports, host, timeout)
