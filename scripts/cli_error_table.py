"""Run every console script with a missing input, a bad flag and a bad value, and print the markdown
table of docs/cli.md (exit status and the one line on stderr of each).

    python scripts/cli_error_table.py            # from the repository root; about a minute
    python scripts/cli_error_table.py --check    # exit 1 if a case breaks the rule (docs/cli.md)

Every case fails before a model is loaded. The paths are relative and do not exist, so the
messages are the same on every machine. tests/test_cli_errors.py runs the same CASES.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MISSING, BAD_FLAG, BAD_VALUE = "missing input", "bad flag", "bad value"
EXPECTED = {MISSING: 1, BAD_FLAG: 2, BAD_VALUE: 2}

# console script -> its module (pyproject.toml [project.scripts])
SCRIPTS = {
    "xnect-demo": "xnect_app.cli.demo", "xnect-process": "xnect_app.cli.process",
    "xnect-server": "xnect_app.cli.server", "xnect-train": "xnect_app.cli.train",
    "xnect-eval": "xnect_app.cli.eval", "xnect-export": "xnect_app.cli.export",
    "xnect-bench": "xnect_app.cli.bench",
}

# (console script, case, arguments)
CASES: list[tuple[str, str, list[str]]] = [
    ("xnect-demo", MISSING, ["--video", "no_such_clip.mp4", "--headless"]),
    ("xnect-demo", BAD_FLAG, ["--video", "no_such_clip.mp4", "--no-such-flag"]),
    ("xnect-demo", BAD_VALUE, ["--video", "no_such_clip.mp4", "--input-size", "100x3"]),
    ("xnect-process", MISSING, ["no_such_clip.mp4", "--out-dir", "no_such_out"]),
    ("xnect-process", BAD_FLAG, ["no_such_clip.mp4", "--out-dir", "no_such_out", "--video"]),
    ("xnect-process", BAD_VALUE, ["no_such_clip.mp4", "--out-dir", "no_such_out", "--shard", "3/2"]),
    ("xnect-server", MISSING, ["--source", "no_such_clip.mp4"]),
    ("xnect-server", BAD_FLAG, ["--no-such-flag"]),
    ("xnect-server", BAD_VALUE, ["--port", "http"]),
    ("xnect-train", MISSING, ["stage1", "--data-root", "no_such_data"]),
    ("xnect-train", BAD_FLAG, ["stage1", "--no-such-flag"]),
    ("xnect-train", BAD_VALUE, ["stage1", "--size", "100x3"]),
    ("xnect-eval", MISSING, ["coco", "no_such_coco_dev"]),
    ("xnect-eval", BAD_FLAG, ["coco", "no_such_coco_dev", "--no-such-flag"]),
    ("xnect-eval", BAD_VALUE, ["coco", "no_such_coco_dev", "--bootstrap", "-5"]),
    ("xnect-export", MISSING, ["onnx", "--weights", "no_such_weights.pt", "--out", "no_such_onnx_out"]),
    ("xnect-export", BAD_FLAG, ["onnx", "--out", "no_such_onnx_out", "--no-such-flag"]),
    ("xnect-export", BAD_VALUE, ["onnx", "--out", "no_such_onnx_out", "--input-size", "100x3"]),
    ("xnect-bench", MISSING, ["tracking", "no_such_clip.mp4"]),
    ("xnect-bench", MISSING, ["pipeline", "--video", "no_such_clip.mp4"]),
    ("xnect-bench", MISSING, ["dynconv", "--video", "no_such_clip.mp4"]),
    ("xnect-bench", MISSING, ["tta", "--video", "no_such_clip.mp4"]),
    ("xnect-bench", MISSING, ["fastpath", "--video", "no_such_clip.mp4", "--no-ap"]),
    ("xnect-bench", BAD_FLAG, ["pipeline", "--no-such-flag"]),
    ("xnect-bench", BAD_VALUE, ["pipeline", "--frames", "0"]),
]


def command(tool: str) -> list[str]:
    """The installed console script, or its module's main() under this Python."""
    found = shutil.which(tool)
    if found:
        return [found]
    return [sys.executable, "-c", f"import sys; from {SCRIPTS[tool]} import main; sys.exit(main())"]


def run_case(tool: str, args: list[str], timeout: float = 300) -> tuple[int, list[str]]:
    """(exit status, the non-empty lines on stderr) of one case, run from the repository root."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    r = subprocess.run(command(tool) + args, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                       env=env, stdin=subprocess.DEVNULL)
    return r.returncode, [line for line in r.stderr.splitlines() if line.strip()]


def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def table(rows: list[tuple[str, str, list[str], int, list[str]]]) -> str:
    lines = ["| script | case | command line | exit | stderr |", "|---|---|---|---|---|"]
    for tool, case, args, code, err in rows:
        message = " / ".join(err) if err else "(nothing)"
        lines.append(f"| {tool} | {case} | {_cell(' '.join([tool, *args]))} | {code} | {_cell(message)} |")
    return "\n".join(lines)


def broken(case: str, code: int, err: list[str]) -> str | None:
    """Why a case breaks the rule, or None."""
    if code != EXPECTED[case]:
        return f"exit {code}, expected {EXPECTED[case]}"
    if len(err) != 1 or ": error: " not in err[0]:
        return f"{len(err)} stderr lines, expected one 'PROG: error: ...' line"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if a case breaks the rule")
    a = ap.parse_args(argv)
    rows, problems = [], []
    for tool, case, args in CASES:
        code, err = run_case(tool, args)
        rows.append((tool, case, args, code, err))
        why = broken(case, code, err)
        if why:
            problems.append(f"{tool} {' '.join(args)}: {why}")
    print(table(rows))
    for p in problems:
        print(f"cli_error_table: {p}", file=sys.stderr)
    return 1 if a.check and problems else 0


if __name__ == "__main__":
    sys.exit(main())
