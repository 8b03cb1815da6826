"""How a commit round's files are made durable (gateway/spool/durable.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from gateway.spool import durable

UNUSED = 1 << 20  # a descriptor no process has open: its fsync and syncfs fail (EBADF)


def test_syncfs_is_used_only_on_kernels_that_report_writeback_errors_through_it():
    assert durable._syncfs("5.7.19-generic") is None
    assert durable._syncfs("4.19.0") is None
    assert durable._syncfs("5.8.0") is not None
    assert durable._syncfs("6.1.0-18-amd64") is not None
    assert durable._syncfs("unknown") is None


@pytest.mark.skipif(durable._SYNCFS is None, reason="no syncfs that reports errors here")
def test_a_failed_syncfs_fails_every_message_of_the_round(tmp_path: Path):
    fds = [os.open(tmp_path / f"{n}.msg", os.O_WRONLY | os.O_CREAT) for n in range(3)]
    earlier = OSError(errno.ENOSPC, "no room")
    failures: list[OSError | None] = [None, earlier, None]
    try:
        durable.sync(durable.FILESYSTEM, UNUSED, fds, failures)
    finally:
        for fd in fds:
            os.close(fd)
    assert failures[1] is earlier
    assert [f.errno for f in failures if f is not None] == [errno.EBADF, errno.ENOSPC,
                                                            errno.EBADF]


def test_files_fsyncs_each_written_file_and_records_its_own_failure(tmp_path: Path):
    good = os.open(tmp_path / "good.msg", os.O_WRONLY | os.O_CREAT)
    os.write(good, b"x")
    failures: list[OSError | None] = [None, None]
    try:
        durable.sync(durable.FILES, UNUSED, [good, UNUSED], failures)
    finally:
        os.close(good)
    assert failures[0] is None
    assert failures[1] is not None and failures[1].errno == errno.EBADF


def test_a_mode_this_machine_cannot_honour_falls_back_to_files():
    assert durable.effective(durable.FILES) == durable.FILES
    expected = durable.FILESYSTEM if durable._SYNCFS is not None else durable.FILES
    assert durable.effective(durable.FILESYSTEM) == expected


def test_a_file_written_before_the_round_is_fsynced_after_the_syncfs(tmp_path: Path):
    fresh = os.open(tmp_path / "fresh.msg", os.O_WRONLY | os.O_CREAT)
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    failures: list[OSError | None] = [None, None]
    try:
        durable.sync(durable.FILESYSTEM, folder, [fresh, UNUSED], failures,
                     opened_before=frozenset({1}))
    finally:
        os.close(fresh)
        os.close(folder)
    if durable._SYNCFS is None:  # "files": each is fsynced anyway
        assert failures[1] is not None
        return
    assert failures[0] is None
    assert failures[1] is not None and failures[1].errno == errno.EBADF
