"""Where the tests find the shared data, and what a test does when an item of it is missing.

The data root is $XNECT_DATA, else ../shared/data next to the repository. One mechanism for every
test file (tests/conftest.py implements the mark and the fixture):

- ``needs_data("videos/two_people_courtyard.mp4", "coco_dev")``: a mark, on a test or as a module's
  ``pytestmark``, naming the items (paths relative to DATA) the test reads;
- ``require("coco_dev")``: the same check inside a fixture or a helper; returns DATA / item;
- the ``shared_data`` fixture (session scope): the data root itself.

A missing item skips the test with a reason naming the missing path (``pytest -ra`` lists it);
under CI=true it is an error instead (pytest.fail with the path): CI must have the data.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("XNECT_DATA") or REPO.parent / "shared" / "data")
MARK = "needs_data"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def missing(*items: str) -> list[Path]:
    """The paths of the items (relative to DATA; none: DATA itself) that do not exist."""
    paths = [DATA / item for item in items] if items else [DATA]
    return [p for p in paths if not p.exists()]


def reason(lost: list[Path]) -> str:
    return (f"shared data missing: {', '.join(map(str, lost))} "
            f"(set XNECT_DATA or provide {REPO.parent / 'shared' / 'data'})")


def require(*items: str) -> Path:
    """Skip (under CI=true: fail) naming what is missing; returns DATA / the first item (DATA without one)."""
    __tracebackhide__ = True  # the skip is reported at the caller's line
    lost = missing(*items)
    if lost:
        if in_ci():
            pytest.fail(f"CI=true: {reason(lost)}", pytrace=False)
        pytest.skip(reason(lost))
    return DATA / items[0] if items else DATA


def needs_data(*items: str) -> pytest.MarkDecorator:
    """A mark: the test reads these items of the shared data (paths relative to DATA)."""
    if not items:
        raise TypeError("needs_data() takes at least one item of the shared data")
    return getattr(pytest.mark, MARK)(*items)
