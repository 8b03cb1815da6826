"""The reliability suite runs the real daemon against hostile input, full disks, corrupt
spools and SIGKILL; each test records what the gateway did, and the table of outcomes is
printed at the end of the run (so CI's log shows them)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import ca, config, daemons, gateway  # noqa: F401  (shared fixtures)

_OUTCOMES: list[tuple[str, str]] = []


@pytest.fixture
def outcome(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record one line saying what the gateway did with this probe."""
    def record(text: str) -> None:
        _OUTCOMES.append((request.node.name, text))
        print(f"{request.node.name}: {text}")
    return record


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 (pytest's own type)
    if not _OUTCOMES:
        return
    terminalreporter.section("reliability outcomes")
    width = max(len(name) for name, _ in _OUTCOMES)
    for name, text in _OUTCOMES:
        terminalreporter.write_line(f"{name:<{width}}  {text}")
