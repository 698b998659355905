"""Where the shipped files are: inside the installed package (wheels, see setup.py) or in the checkout."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def asset_dir(name: str) -> Path:
    """`web` or `models`: xnect_app/_data/NAME in a wheel install, else NAME/ beside the package."""
    packaged = _PACKAGE / "_data" / name
    return packaged if packaged.is_dir() else _PACKAGE.parent / name
