"""Tests marked `serial` run alone, while the other xdist workers of the run wait.

A test that asserts a ratio, a deadline or a rate (a throughput guard, a kill loop, "times
out within 2 s") must not share the two cores with the rest of the suite. Every other
test holds a shared lock on one file of the run for its whole setup, call and teardown;
a serial test takes it exclusively. A second file is the turnstile that keeps a waiting
serial test from being starved: a test passes it before taking its lock, and a serial
test holds it until it is done, so no new test starts while a serial one waits or runs.

`FileScheduling` is xdist's `loadfile` (a file's tests on one worker, in order, so module
fixtures start once) with all serial tests in one last unit, where the other workers are
winding down anyway. The workers name the serial tests in a third file of the run.
Files are per run (`PYTEST_XDIST_TESTRUNUID`); without xdist nothing is locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadFileScheduling

MARK = "serial"
_FILES = ("turnstile", "tests", "serial")


def _path(run: str, name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"send-sikkert-run-{run}.{name}"


def _run() -> str | None:
    """The run's id in an xdist worker; None in a run without workers."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return None


class RunLock:
    """The shared/exclusive lock of one xdist run, for one worker process."""

    def __init__(self, run: str) -> None:
        self._turnstile = os.open(_path(run, "turnstile"), os.O_RDWR | os.O_CREAT, 0o600)
        self._tests = os.open(_path(run, "tests"), os.O_RDWR | os.O_CREAT, 0o600)

    @contextlib.contextmanager
    def hold(self, serial: bool) -> Iterator[None]:
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._tests, fcntl.LOCK_EX if serial else fcntl.LOCK_SH)
            if not serial:
                fcntl.flock(self._turnstile, fcntl.LOCK_UN)
            try:
                yield
            finally:
                fcntl.flock(self._tests, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)  # again for a shared one: harmless


def lock_for_this_process() -> RunLock | None:
    run = _run()
    return RunLock(run) if run else None


def name_serial_tests(nodeids: Iterable[str]) -> None:
    """A worker tells the controller's scheduler which tests are serial (every worker
    collects the same, so whichever writes last writes the same)."""
    run = _run()
    if run:
        path = _path(run, "serial")
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text("".join(f"{n}\n" for n in nodeids))
        partial.replace(path)


def remove_files(run: str) -> None:
    """The controller's clean-up once every worker has finished."""
    for name in _FILES:
        _path(run, name).unlink(missing_ok=True)


class FileScheduling(LoadFileScheduling):
    """xdist's `loadfile`, with every serial test in one last unit of its own."""

    def __init__(self, config: pytest.Config, log: Producer | None = None) -> None:
        super().__init__(config, log)
        self._run: str = config.option.testrunuid
        self._serial: set[str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._serial is None:  # first asked once every worker has collected
            path = _path(self._run, "serial")
            self._serial = set(path.read_text().splitlines()) if path.exists() else set()
        return MARK if nodeid in self._serial else super()._split_scope(nodeid)
