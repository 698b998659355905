"""SelecSLS cores vs a ResNet-50 trunk on the CPU (same as `xnect-bench backbone`).

The implementation lives in `xnect_app.bench.backbone` so the installed console script has it;
this file lets a checkout run it without installing:

  python benchmarks/backbone.py --quick
  python benchmarks/backbone.py --json --out backbone.json
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xnect_app.bench.backbone import (  # noqa: E402  (re-exported for scripts and notebooks)
    BackboneBenchConfig, ResNet50Trunk, format_report, fuse_resnet, run_benchmark,
    simulate_sparsity,
)
from xnect_app.cli.bench import main  # noqa: E402

__all__ = ["BackboneBenchConfig", "ResNet50Trunk", "format_report", "fuse_resnet",
           "run_benchmark", "simulate_sparsity"]

if __name__ == "__main__":
    sys.exit(main(["backbone", *sys.argv[1:]]))
