"""The shared-data mechanism of tests/shared_data.py (the needs_data mark and the shared_data fixture),
and Ctrl-C as a terminal delivers it."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from shared_data import DATA, MARK, in_ci, missing, reason, require


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts background jobs (`make test &`, nohup) with SIGINT ignored, and Python then
    # never raises KeyboardInterrupt: the Ctrl-C tests would wait for a key press that cannot
    # come. Restore what a terminal gives; the tools' own subprocesses then get it too.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line("markers", f"{MARK}(*items): the test reads these items of the shared data "
                                       f"({DATA}); a missing one skips it, under CI=true it is an error")


def _lost(item: pytest.Item) -> list[Path]:
    needed = [name for mark in item.iter_markers(MARK) for name in mark.args]
    return missing(*dict.fromkeys(needed)) if needed else []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A skip mark, not a skip raised at setup: `pytest -ra` then reports each skip at its test's line.
    if in_ci():
        return
    for item in items:
        lost = _lost(item)
        if lost:
            item.add_marker(pytest.mark.skip(reason=reason(lost)))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if in_ci():
        lost = _lost(item)
        if lost:
            pytest.fail(f"CI=true: {reason(lost)}", pytrace=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data root; skips (under CI=true: fails) naming it when it is missing."""
    return require()
