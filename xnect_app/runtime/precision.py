"""Which arithmetic Stage I runs in: float32, bfloat16 where the CPU has instructions for it, or an
int8 core (`runtime.int8`)."""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["PRECISIONS", "cpu_has_bf16", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "int8")
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bfloat16 instructions (x86 avx512_bf16 or AMX), from /proc/cpuinfo.
    Without them bfloat16 convolutions are emulated and slower than float32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return any(f in line.split() for f in _BF16_CPU_FLAGS)
    return False


def resolve_precision(precision: str, backend: str, device: torch.device) -> str:
    """"fp32", "bf16" or "int8": auto is bf16 for the torch backend on a CPU with bfloat16
    instructions, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if backend == "torch" and device.type == "cpu" and cpu_has_bf16() else "fp32"
    if precision in ("bf16", "int8") and (backend != "torch" or device.type != "cpu"):
        raise ValueError(f"{precision} inference runs with the torch backend on the CPU, not {backend} on {device}")
    return precision
