"""ModelConfig: which networks make the Stage I maps, and how. Every tool builds one from its
model options (`xnect_app.cli.options`); the library takes it as it is."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from .precision import PRECISIONS
from .tta import scaled_size

__all__ = ["ModelConfig", "BACKENDS", "DYNCONV_MASKS"]

BACKENDS = ("torch", "onnxruntime")
DYNCONV_MASKS = ("auto", "learned", "motion")


@dataclass(frozen=True)
class ModelConfig:
    """How Stage I and II run. Frozen and picklable (worker processes build their own estimator).

    Args:
        weights: weights file made by `xnect-train export`; None: the bundled default.
        checkpoint: a Stage I training checkpoint (runs/.../last.pt) instead: its moving average
            when it keeps one, without Stage II.
        random_init: an untrained network instead (testing tools, benchmarks).
        seed: with random_init, the seed that makes it the same network every run (None: torch's
            global random state).
        backbone: SelecSLS variant, for random_init only (weights carry their own).
        input_size: network input (width, height), multiples of 16.
        device: torch device string.
        backend: "torch", or "onnxruntime" (Stage I and II in ONNX Runtime; decoding is the same).
        onnx_dir: with backend="onnxruntime", a directory written by `xnect-export onnx`; the
            weights options are then unused. Without it the torch networks are exported in memory.
        onnx_threads: ONNX Runtime intra-op threads (None: its default).
        precision: Stage I arithmetic on the CPU: "fp32", "bf16" (bfloat16; maps come back as
            float32), "int8" (the SelecSLS core in int8, the heads in bf16 where possible; needs
            the activation ranges beside the weights file, `runtime.int8`) or "auto": bf16 where
            the CPU has bfloat16 instructions (avx512_bf16, AMX; about 1.9x faster dense Stage I,
            the same coco_dev AP), else fp32.
        dynconv: False (dense), True / "learned" (the weights' mask unit), "motion" (motion against
            a learned background, static cameras) or "auto" (learned for independent images or
            with a budget when the weights have a mask unit, else motion).
        dynconv_budget: with learned masks, the largest active share of the frame.
        dynconv_margin: with motion masks, how many stride-8 cells around the motion are computed
            too (default `MotionGate`'s 3): more cells, slower, closer to the dense result.
        flip_test: also run Stage I on the mirrored frame and average the two (`runtime.tta`):
            more accurate 2D at twice the Stage I time; dense only.
        flip_scale: with flip_test, the mirrored pass runs at this multiple of each test scale's
            size: 0.625 costs about 1.6x a single pass instead of 2x, but people too small for the
            mirror fade (default 1: the mirror at full size).
        test_scales: run Stage I at these multiples of input_size and fuse the maps, e.g.
            (1, 0.75, 0.5): more accurate for large people, 2x the Stage I time; dense only.
        torch_thread: build and run the networks on the process's torch thread
            (`runtime.torch_thread`) whichever thread calls, so a capture or server thread does not
            slow torch down (up to 2x for DynConv); False runs them in the calling thread.
    """

    weights: str | None = None
    checkpoint: str | None = None
    random_init: bool = False
    seed: int | None = None
    backbone: str = "selecsls60"
    input_size: tuple[int, int] = (512, 320)
    device: str = "cpu"
    backend: str = "torch"
    onnx_dir: str | None = None
    onnx_threads: int | None = None
    precision: str = "auto"
    dynconv: bool | str = False
    dynconv_budget: float | None = None
    dynconv_margin: int | None = None
    flip_test: bool = False
    flip_scale: float = 1.0
    test_scales: tuple[float, ...] = (1.0,)
    torch_thread: bool = True

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        for name in ("weights", "checkpoint", "onnx_dir"):
            if getattr(self, name) is not None:
                put(name, os.fspath(getattr(self, name)))
        w, h = (int(v) for v in self.input_size)
        put("input_size", (w, h))
        put("test_scales", tuple(float(s) for s in self.test_scales))
        put("flip_scale", float(self.flip_scale))
        put("flip_test", bool(self.flip_test))
        put("dynconv", self.dynconv or False)
        if w % 16 or h % 16:
            raise ValueError(f"input size {w}x{h}: width and height must be multiples of 16")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.dynconv not in (False, True) and self.dynconv not in DYNCONV_MASKS:
            raise ValueError(f"DynConv mask {self.dynconv!r}: choose auto, learned or motion")
        if self.dynconv_budget is not None and not 0.0 < float(self.dynconv_budget) <= 1.0:
            raise ValueError(f"DynConv budget {self.dynconv_budget}: give the largest active share of the "
                             "frame, in (0, 1]")
        if self.dynconv_margin is not None and not 0 <= int(self.dynconv_margin) <= 16:
            raise ValueError(f"DynConv margin {self.dynconv_margin}: for motion masks only, 0 to 16 cells")
        if not 0.0 < self.flip_scale <= 1.0:
            raise ValueError(f"flip scale {self.flip_scale}: give a factor in (0, 1]")
        if not self.test_scales:
            raise ValueError("test_scales: give at least one scale")
        if (self.flip_test or self.scale_sizes != [self.input_size]) and self.dynconv:
            raise ValueError("flip test and test scales run Stage I on whole frames: they cannot be combined "
                             "with dynconv")

    @property
    def scale_sizes(self) -> list[tuple[int, int]]:
        """The sizes Stage I runs at, one per distinct test scale."""
        return list(dict.fromkeys(scaled_size(self.input_size, s) for s in self.test_scales))

    @property
    def mirror_sizes(self) -> dict[tuple[int, int], tuple[int, int]]:
        """With the flip test, the mirrored pass's size for each scale size; empty without."""
        if not self.flip_test:
            return {}
        return {sz: scaled_size(sz, self.flip_scale) if self.flip_scale != 1.0 else sz for sz in self.scale_sizes}

    @property
    def augmented(self) -> bool:
        """Whether Stage I runs more than one pass per frame (flip test or test scales)."""
        return self.flip_test or self.scale_sizes != [self.input_size]

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
