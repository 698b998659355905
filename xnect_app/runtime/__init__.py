"""The runtime: whatever turns letterboxed images into Stage I maps (and runs Stage II), behind one
small interface (`maps.MapRunner`). Precision, DynConv and test-time augmentation are chosen here.

    rt = build_runtime(ModelConfig(precision="fp32"))
    maps = rt.maps([letterboxed])          # StageOneMaps: heatmaps, pafs, enc3d, masks
    pose3d_m = rt.lift(joint_feats, readout_m, valid)   # Stage II (None when the model has none)

Runners: `dense.TorchDense`, `sparse.TorchSparse` (the mask unit), `sparse.MotionSparse` (motion
gates, `motion.py`), `onnx.OnnxRunner`; `tta.TestTimeAugmentation` wraps any dense one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..weights import Networks, load_networks
from .config import BACKENDS, DYNCONV_MASKS, ModelConfig
from .dense import TorchDense, TorchLifter
from .maps import Lifter, MapRunner, StageOneMaps
from .onnx import OnnxLifter, OnnxNetworks, OnnxRunner, providers_for
from .precision import cpu_has_bf16, resolve_precision
from .sparse import MotionSparse, TorchSparse
from .tta import TestTimeAugmentation

__all__ = ["ModelConfig", "BACKENDS", "DYNCONV_MASKS", "Runtime", "build_runtime", "resolve_dynconv",
           "MapRunner", "Lifter", "StageOneMaps"]


@dataclass
class Runtime:
    maps: MapRunner            # letterboxed images -> Stage I maps
    lift: Lifter | None        # Stage II, or None (the read-out is the 3D pose)
    model_name: str
    precision: str             # "fp32", "bf16" or "int8"
    dynconv: str | bool        # False, "learned" or "motion"
    stage1: Any                # the torch networks (None when ONNX Runtime runs exported files)
    stage2: Any


def _int8_stage1(model: ModelConfig, stage1: Any, dynconv: str | bool):
    """Stage I with an int8 core, its activation ranges read from beside the weights file."""
    from ..weights import default_weights_path
    from .int8 import Int8Stage1, load_ranges, ranges_path
    if dynconv:
        raise ValueError("int8 runs the dense network: not with DynConv")
    if model.checkpoint is not None or model.random_init:
        raise ValueError("int8 needs a weights file with its activation ranges beside it "
                         "(`xnect-export int8`), not a checkpoint or random weights")
    weights = model.weights or default_weights_path()
    net = Int8Stage1(stage1, load_ranges(ranges_path(weights), weights))
    net.bf16_inference = cpu_has_bf16()
    return net


def resolve_dynconv(model: ModelConfig, stage1: Any, model_name: str, stream: bool) -> str | bool:
    """False, "learned" or "motion" for model.dynconv; ValueError for what cannot run.

    "auto": the mask unit for independent images or with a budget, when the weights have one,
    else motion masks (which need a stream of frames from a static camera). On vtest.avi motion
    masks (margin 3) run Stage I 2.3-2.7x faster at OKS 0.88-0.94 against the dense result on the
    people both find (the cells around the computed ones hold the background's values); the mask
    unit, whose skipped cells hold zeros, 1.5x at 0.81. On single images only the mask unit works.
    """
    mode = "learned" if model.dynconv is True else model.dynconv
    budget, margin = model.dynconv_budget, model.dynconv_margin
    if mode == "auto":
        has_unit = stage1 is not None and bool(stage1.cfg.dynconv)
        # independent images cannot have motion masks: without a unit the error then says so
        mode = "learned" if not stream or (has_unit and budget is not None) else "motion"
        if mode == "motion" and budget is not None:
            raise ValueError(f"the weights {model_name!r} have no DynConv mask unit, and a budget "
                             "applies to learned masks only")
    if margin is not None and mode != "motion":
        raise ValueError(f"DynConv margin {margin}: for motion masks only, 0 to 16 cells")
    if not mode:
        if budget is not None:
            raise ValueError("a DynConv budget needs DynConv on (--dynconv)")
        return False
    if model.backend != "torch":
        raise ValueError("DynConv sparse execution runs with the torch backend, not " + model.backend)
    if torch.device(model.device).type != "cpu":
        raise ValueError("DynConv sparse execution is implemented for the CPU (masks run dense on GPUs)")
    if mode == "motion":
        if budget is not None:
            raise ValueError("a DynConv budget applies to learned masks, not motion masks")
        if not stream:
            raise ValueError("motion masks need a video or camera stream, not independent images")
        return "motion"
    if not stage1.cfg.dynconv:
        raise ValueError(f"the weights {model_name!r} have no DynConv mask unit; train one with "
                         "`xnect-train stage1 --dynconv --init WEIGHTS`, or use motion masks on a static "
                         "camera (--dynconv --dynconv-mask motion)")
    return "learned"


def build_runtime(model: ModelConfig, networks: Networks | None = None, stream: bool = True) -> Runtime:
    """The runtime `model` describes; `networks` instead of loading model's weights (training,
    benchmarks). stream: the frames form a video stream (motion masks possible) rather than
    independent images. ValueError / FileNotFoundError for what cannot be built."""
    device = torch.device(model.device)
    precision = resolve_precision(model.precision, model.backend, device)
    ort = None
    if model.backend == "onnxruntime" and model.onnx_dir is not None:
        ort = OnnxNetworks(model.onnx_dir, threads=model.onnx_threads, providers=providers_for(model.device))
        if not ort.supports_size(model.input_size):
            (w, h), (w0, h0) = model.input_size, ort.input_size
            raise ValueError(f"input size {w}x{h}: the ONNX model in {model.onnx_dir} was exported for {w0}x{h0} "
                             "with a fixed size")
        stage1, stage2, name = None, None, ort.model_name
    else:
        if networks is None:
            networks = load_networks(model.weights, model.checkpoint, model.random_init, model.backbone,
                                     model.seed, mask_unit=model.dynconv in (True, "learned"))
        stage1, stage2, name = networks
    if stage1 is not None:
        stage1.to(device).eval()
        stage1.bf16_inference = precision == "bf16"
    dynconv = resolve_dynconv(model, stage1, name, stream)
    if not dynconv and stage1 is not None and stage1.cfg.dynconv:
        stage1.set_sparse(False, mask_unit=False)  # weights with a mask unit, run dense
    if precision == "int8":
        stage1 = _int8_stage1(model, stage1, dynconv)
    if stage2 is not None:
        stage2.to(device).eval()
    if model.backend == "onnxruntime" and ort is None:
        ort = OnnxNetworks.from_networks(stage1, stage2, model.input_size, name, threads=model.onnx_threads,
                                         providers=providers_for(model.device))
    sizes = set(model.scale_sizes) | set(model.mirror_sizes.values())
    if ort is not None and not all(ort.supports_size(sz) for sz in sizes):
        raise ValueError(f"test scales: the ONNX model in {model.onnx_dir} was exported for one fixed size")
    if ort is not None:
        runner: MapRunner = OnnxRunner(ort)
    elif dynconv == "learned":
        runner = TorchSparse(stage1, device, model.dynconv_budget)
    elif dynconv == "motion":
        runner = MotionSparse(stage1, device, model.input_size, model.dynconv_margin)
    else:
        runner = TorchDense(stage1, device)
    if model.augmented:
        runner = TestTimeAugmentation(runner, model.input_size, model.scale_sizes, model.mirror_sizes)
    if ort is not None and ort.has_stage2:
        lift: Lifter | None = OnnxLifter(ort)
    else:
        lift = TorchLifter(stage2, device) if stage2 is not None else None
    return Runtime(runner, lift, name, precision, dynconv, stage1, stage2)
