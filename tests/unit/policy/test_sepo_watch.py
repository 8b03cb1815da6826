"""The SEPO list file is re-read when it changes, and a bad new version keeps the old list."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway.policy.sepo import SepoList, SepoWatch, load_sepo


def replace(path: Path, text: str | bytes) -> None:
    """What a cron job does: write a new file beside it and rename it into place."""
    new = path.with_suffix(".new")
    new.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(new, path)


def reload_ok() -> float | None:
    return REGISTRY.get_sample_value("sendsikkert_last_reload_successful", {"source": "sepo"})


@pytest.fixture
def listed(tmp_path: Path) -> tuple[Path, SepoList, SepoWatch]:
    path = tmp_path / "sepo.txt"
    path.write_text("ast.dk\nkl.dk\n")
    return path, load_sepo(path, tmp_path / "gw.toml"), SepoWatch(tmp_path / "gw.toml")


def settled(watch: SepoWatch, current: SepoList) -> SepoList | None:
    """Two polls: the first notices a change, the second reads it if it held still."""
    first = watch.poll(current)
    assert first is None
    return watch.poll(current)


def test_an_unchanged_file_is_left_alone(listed):
    path, current, watch = listed
    assert [watch.poll(current) for _ in range(3)] == [None, None, None]


def test_a_replaced_file_is_read_once_it_holds_still(listed):
    path, current, watch = listed
    replace(path, "ast.dk\nkl.dk\n.region.example.dk\n")
    new = settled(watch, current)
    assert new is not None and "a.region.example.dk" in new and len(new) == 3
    assert reload_ok() == 1
    assert watch.poll(new) is None  # the new one is now current


def test_a_file_written_in_place_is_not_read_halfway(listed):
    path, current, watch = listed
    with path.open("a") as f:
        f.write("sikker")
        f.flush()
        assert watch.poll(current) is None  # changed
        f.write("mail.example.dk\n")
        f.flush()
        assert watch.poll(current) is None  # changed again: still being written
    new = watch.poll(current)
    assert new is not None and "sikkermail.example.dk" in new


@pytest.mark.parametrize("text, why", [(b"ast.dk\nnot a domain\n", "line 2"),
                                       (b"", "now empty"),
                                       (b"# nothing but comments\n", "now empty"),
                                       (b"\xff\xfe<html>", "not UTF-8")])
def test_a_bad_new_version_keeps_the_running_list(listed, caplog, text, why):
    path, current, watch = listed
    replace(path, text)
    with caplog.at_level(logging.ERROR, logger="gateway.policy.sepo"):
        assert settled(watch, current) is None
        assert watch.poll(current) is None  # refused once, not again and again
    [record] = caplog.records
    assert why in record.getMessage() and "keeping the 2 domain(s)" in record.getMessage()
    assert reload_ok() == 0
    replace(path, "ast.dk\n")  # the operator mends it
    mended = settled(watch, current)
    assert mended is not None and len(mended) == 1 and reload_ok() == 1


def test_a_vanished_file_keeps_the_running_list(listed, caplog):
    path, current, watch = listed
    path.unlink()
    with caplog.at_level(logging.ERROR, logger="gateway.policy.sepo"):
        assert [watch.poll(current) for _ in range(3)] == [None, None, None]
    assert len(caplog.records) == 1 and "cannot be seen" in caplog.text
    path.write_text("ast.dk\n")
    assert settled(watch, current) is not None


def test_an_empty_list_may_replace_an_empty_one(tmp_path: Path):
    path = tmp_path / "sepo.txt"
    path.write_text("")
    current, watch = load_sepo(path, tmp_path / "gw.toml"), SepoWatch(tmp_path / "gw.toml")
    replace(path, "# still none\n")
    assert settled(watch, current) is not None
