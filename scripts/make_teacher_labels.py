#!/usr/bin/env python
"""Make the BlazePose teacher labels (data_cache/teacher_*.npz) in a separate venv.

mediapipe==0.10.14 (the last release bundling the BlazePose models) conflicts with the main
environment, so this script creates a venv for it (once) and runs xnect_app.train.teacher there:

    python scripts/make_teacher_labels.py --venv /work/teacher_venv -- --data-root ../shared/data

Everything after `--` goes to `python -m xnect_app.train.teacher` (see its --help). The run is
resumable: rerun the same command after an interruption.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=str(REPO.parent / "teacher_venv"), help="venv for mediapipe (created if missing)")
    ap.add_argument("teacher_args", nargs=argparse.REMAINDER, help="arguments for xnect_app.train.teacher, after --")
    args = ap.parse_args()
    venv = Path(args.venv)
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating {venv} with mediapipe==0.10.14 ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "mediapipe==0.10.14", "opencv-python-headless"],
                       check=True)
    rest = args.teacher_args[1:] if args.teacher_args[:1] == ["--"] else args.teacher_args
    env = dict(os.environ, PYTHONPATH=str(REPO), GLOG_minloglevel="2")
    return subprocess.call([str(py), "-m", "xnect_app.train.teacher", *rest], cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main())
