"""Stage I with its SelecSLS core in int8 (`precision="int8"`).

The core is quantised with PyTorch's x86 FX flow: per-channel int8 weights, uint8 activations,
fbgemm / oneDNN kernels (VNNI where the CPU has it). The heads stay in bfloat16 (float32 on CPUs
without bfloat16 instructions): their activations are heavy-tailed (on some images 50x their
median range), which one int8 scale per tensor cannot hold.

Activation ranges come from calibration images (`calibrate`) and are kept in a small JSON file
beside the weights (`ranges_path`: models/xnect_selecsls60.int8.json for the bundled weights),
so loading needs no images: each observer of the prepared graph reports its saved range.
`xnect-export int8 --images DIR` writes the file for any weights file.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..nn.heads import ModuleOps, run_heads
from ..nn.stage1 import Stage1Output

__all__ = ["RANGES_SUFFIX", "ranges_path", "file_digest", "calibrate", "save_ranges", "load_ranges",
           "Int8Stage1"]

RANGES_SUFFIX = ".int8.json"
_FORMAT = 1
_OBSERVER_PREFIX = "activation_post_process_"


def ranges_path(weights: str | os.PathLike) -> Path:
    """Where the activation ranges of a weights file live: beside it, `<stem>.int8.json`."""
    w = Path(weights)
    return w.with_name(w.stem + RANGES_SUFFIX)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-1 of a file: which weights a ranges file was made for."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Core(nn.Module):
    """Normalisation and the SelecSLS core of a BN-folded Stage I network: (stride 8, stride 16)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        feats = self.net.core(self.net.normalise(x))
        return feats.stride8, feats.stride16


def _prepared_core(fused: nn.Module, example: torch.Tensor):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():  # torch.ao.quantization's own deprecation notices
        warnings.simplefilter("ignore")
        return prepare_fx(_Core(fused).eval(), get_default_qconfig_mapping("x86"), (example,))


def _observers(prepared: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in prepared.named_children() if name.startswith(_OBSERVER_PREFIX)}


def calibrate(stage1: nn.Module, images: Sequence[np.ndarray]) -> dict[str, Any]:
    """Activation ranges of Stage I's core over calibration images (1 x 3 x H x W float32, BGR
    0..255, letterboxed like the estimator's input; `runtime.onnx.calibration_images` makes them)."""
    if not images:
        raise ValueError("int8 calibration needs at least one image")
    prepared = _prepared_core(stage1.fused(), torch.from_numpy(images[0]))
    with torch.inference_mode():
        for img in images:
            prepared(torch.from_numpy(img))
    observers = {}
    for name, obs in _observers(prepared).items():
        scale, zero_point = obs.calculate_qparams()
        observers[name] = {"scale": float(scale), "zero_point": int(zero_point)}
    return {"format": _FORMAT, "torch": torch.__version__.split("+")[0], "images": len(images),
            "observers": observers}


def save_ranges(ranges: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ranges, indent=1) + "\n")
    tmp.replace(path)
    return path


def load_ranges(path: str | os.PathLike, weights: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ranges file; FileNotFoundError / ValueError naming it and how to make one, also when
    it was made for another file than `weights`."""
    path = Path(path)
    hint = "make it with `xnect-export int8 --weights WEIGHTS --images DIR` (images like the ones you run on)"
    if not path.is_file():
        raise FileNotFoundError(f"int8 needs the activation ranges of the weights in {path}: {hint}")
    try:
        ranges = json.loads(path.read_text())
        if ranges.get("format") != _FORMAT or not ranges.get("observers"):
            raise ValueError("not an int8 ranges file")
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{path}: cannot read int8 activation ranges ({e}); {hint}") from None
    if weights is not None and ranges.get("weights_sha1") not in (None, file_digest(weights)):
        raise ValueError(f"{path} holds the int8 ranges of other weights than {weights}: {hint}")
    return ranges


class Int8Stage1(nn.Module):
    """A Stage I network whose core runs in int8 with fixed activation ranges; the heads in
    bfloat16 when `bf16_inference`, else float32, NHWC. Everything else the runtime asks of a
    Stage I network (`cfg`, `set_sparse`, ...) is the wrapped network's."""

    def __init__(self, stage1: nn.Module, ranges: dict[str, Any]):
        super().__init__()
        from torch.ao.quantization.quantize_fx import convert_fx
        fused = stage1.fused()
        prepared = _prepared_core(fused, torch.zeros(1, 3, 64, 64))
        saved = ranges["observers"]
        found = _observers(prepared)
        if set(found) != set(saved):
            raise ValueError(f"the int8 ranges were made for another network or torch version "
                             f"({len(saved)} activations saved, {len(found)} in this core, torch "
                             f"{ranges.get('torch')} then): make them again with `xnect-export int8`")
        for name, obs in found.items():  # the observers stay (convert reads more of them than the range)
            fixed = (torch.tensor([saved[name]["scale"]]), torch.tensor([saved[name]["zero_point"]]))
            obs.calculate_qparams = functools.partial(tuple, fixed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            core = convert_fx(prepared)
        object.__setattr__(self, "_core", core)            # not a submodule: no state dict
        object.__setattr__(self, "_heads", fused.to(memory_format=torch.channels_last))
        self.net = stage1
        self.bf16_inference = False

    def forward(self, x: torch.Tensor) -> Stage1Output:
        with warnings.catch_warnings():  # a quantised cat of inputs with other ranges requantises them
            warnings.filterwarnings("ignore", message="All inputs of this cat operator")
            f8, f16 = self._core(x)
        cl = torch.channels_last
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16_inference):
            out2, enc = run_heads(ModuleOps(self._heads), f8.contiguous(memory_format=cl),
                                  f16.contiguous(memory_format=cl))
        j = self.net.cfg.num_joints_2d
        return Stage1Output(*(t.float().contiguous() for t in (out2[:, :j], out2[:, j:], enc)))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            net = self.__dict__.get("_modules", {}).get("net")
            if net is None:
                raise
            return getattr(net, name)
