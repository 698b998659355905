"""Small helpers shared by the console scripts."""
from __future__ import annotations

import re
import sys
from typing import NoReturn


def die(msg: str, code: int = 2) -> NoReturn:
    """One-line error on stderr and a non-zero exit: the only way CLIs report user errors."""
    prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "xnect"
    print(f"{prog}: error: {msg}", file=sys.stderr)
    sys.exit(code)


def parse_size(text: str) -> tuple[int, int]:
    """'512x320' -> (512, 320); both multiples of 16."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        die(f"size {text!r} is not WIDTHxHEIGHT, e.g. 512x320")
    w, h = int(m.group(1)), int(m.group(2))
    if w % 16 or h % 16 or w < 64 or h < 64:
        die(f"size {w}x{h}: width and height must be multiples of 16 and at least 64")
    return w, h
