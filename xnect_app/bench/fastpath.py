"""Faster CPU paths for the pose model, measured side by side in one run (issue 8).

Every variant is a full PoseEstimator (letterbox -> Stage I -> numpy decoding -> Stage II), so
the speed and the accuracy are those a user gets:

  fp32            the model's modules as they are, torch eager (Stage1Net.fast_dense off)
  default         what PoseEstimator() runs: BN folded, NHWC (Stage1Net.fast_dense), precision
                  "auto" (bf16 where the CPU has bfloat16 instructions; the notes say which)
  folded-fp32     BN folded, NHWC, float32 (ModelConfig(precision="fp32"))
  bf16            BN folded, NHWC, under bfloat16 autocast (ModelConfig(precision="bf16"),
                  emulated and slow on CPUs without bfloat16 instructions)
  int8            the SelecSLS core in int8 with PyTorch's x86 quantisation (VNNI), the heads
                  in bfloat16 (ModelConfig(precision="int8"); ranges beside the weights file)
  fused           BN folded into every conv (core: selecsls.fuse_bn; heads: fuse_conv_bn)
  fused+pruned    also implicit-sparsity pruning of the core (selecsls.prune, |gamma| <= 1e-3)
  channels-last   fused+pruned with NHWC memory format (PoseEstimator's default torch path
                  is this without pruning: Stage1Net.fast_dense)
  compiled        fused+pruned under torch.compile (inductor; compile time reported apart)
  ort             ONNX Runtime fp32 (graph optimisations on; it fuses BN itself)
  ort-int8        ONNX Runtime static int8 (QDQ, per-channel weights) of the core (the heads
                  stay fp32), calibrated on real images (coco_train_extra, never the
                  coco_dev images it is scored on)

Frames are decoded once from the video and letterboxed inside the estimators; each round runs
every variant on the same frames in turn, so load from other processes hits all of them alike.
Reported per variant: network-only and end-to-end fps (medians over frames), the largest map
difference to fp32 on the timed frames, and, unless --no-ap, body-joint AP on coco_dev.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..estimator import PoseEstimator, TrackConfig
from ..io.sinks import atomic_write_text
from ..nn.selecsls import prune
from ..nn.stage1 import Stage1Net
from ..options import (DATA_ROOT, SOURCE_OPTIONS, OneLineParser, UsageError, UserError, add_model_args, cli_hint,
                       exit_code, fail, input_size, model_config, positive_int)
from ..runtime.config import ModelConfig
from ..runtime.onnx import INT8_CALIBRATION_METHODS, calibration_images, export_onnx, quantize_stage1_int8
from ..runtime.preprocess import letterbox
from ..train.evaluate import evaluate_coco
from ..weights import load_networks
from .frames import DEFAULT_VIDEO, add_video_arg, read_frames, require_video

_logger = logging.getLogger(__name__)

DEFAULT_DATA = Path(DATA_ROOT)
VARIANTS = ("fp32", "default", "folded-fp32", "bf16", "int8", "fused", "fused+pruned", "channels-last", "compiled", "ort",
            "ort-int8")
PRUNE_GAMMA = 1e-3


@dataclass
class FastpathConfig:
    video: Path = DEFAULT_VIDEO
    frames: int = 12
    rounds: int = 2
    warmup: int = 2
    size: tuple[int, int] = (512, 320)
    threads: int = 2
    variants: tuple[str, ...] = VARIANTS
    ap: bool = True
    coco_dev: Path = DEFAULT_DATA / "coco_dev"
    calib_dir: Path = DEFAULT_DATA / "coco_train_extra"
    calib_images: int = 16
    calib_method: str = "entropy"
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- variants

def fused_stage1(net: Stage1Net, gamma_thresh: float | None = None) -> Stage1Net:
    """A copy of Stage I with BN folded everywhere (and the core pruned when gamma_thresh)."""
    out = net.fused()
    if gamma_thresh is not None:
        out.core = prune(net.core, gamma_thresh)
    return out


def eager_stage1(net: Stage1Net) -> Stage1Net:
    """A copy that runs its modules as they are (no folded NHWC snapshot)."""
    out = copy.deepcopy(net).eval()
    out.fast_dense = False
    return out


class ChannelsLast(nn.Module):
    """Runs a network in NHWC memory format (input converted on the way in). Everything else the
    runtime asks of a Stage I network (`cfg`, `set_sparse`, `bf16_inference`, ...) is the wrapped
    network's."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor):
        return self.net(x.contiguous(memory_format=torch.channels_last))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules (`net`)
        except AttributeError:
            net = self.__dict__.get("_modules", {}).get("net")
            if net is None:
                raise
            return getattr(net, name)

    def __setattr__(self, name: str, value) -> None:
        net = self.__dict__.get("_modules", {}).get("net")
        if (net is not None and name not in self.__dict__ and not isinstance(value, (nn.Module, torch.Tensor))
                and hasattr(net, name)):
            setattr(net, name, value)  # settings such as bf16_inference belong to the network that runs
        else:
            super().__setattr__(name, value)


def _count_channels(net: nn.Module) -> int:
    return sum(m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d))


def build_variants(stage1: Stage1Net, stage2, cfg: FastpathConfig, name: str,
                   workdir: Path) -> dict[str, tuple[PoseEstimator | None, dict[str, Any]]]:
    """{variant: (estimator or None if it failed, notes)} in cfg.variants order."""
    model = ModelConfig(input_size=cfg.size, precision="fp32", torch_thread=False)
    untracked = TrackConfig(tracking=False)

    def make(net: Stage1Net, **settings: Any) -> PoseEstimator:
        return PoseEstimator.from_networks(net, stage2, replace(model, **settings), track=untracked, name=name)

    out: dict[str, tuple[PoseEstimator | None, dict[str, Any]]] = {}
    pruned: Stage1Net | None = None

    def get_pruned() -> Stage1Net:
        nonlocal pruned
        if pruned is None:
            pruned = fused_stage1(stage1, PRUNE_GAMMA)
        return pruned

    builders: dict[str, Callable[[], tuple[PoseEstimator, dict[str, Any]]]] = {
        "fp32": lambda: (make(eager_stage1(stage1)), {}),
        "default": lambda: _default_estimator(make(copy.deepcopy(stage1), precision="auto")),
        "folded-fp32": lambda: (make(copy.deepcopy(stage1)), {}),
        "bf16": lambda: (make(copy.deepcopy(stage1), precision="bf16"), {}),
        "int8": lambda: (make(copy.deepcopy(stage1), precision="int8"), {}),
        "fused": lambda: (make(fused_stage1(stage1)), {}),
        "fused+pruned": lambda: (
            make(get_pruned()),
            {"conv_channels": _count_channels(get_pruned()), "conv_channels_before": _count_channels(
                fused_stage1(stage1)), "gamma_thresh": PRUNE_GAMMA}),
        "channels-last": lambda: (
            make(ChannelsLast(copy.deepcopy(get_pruned()))), {}),
        "compiled": lambda: (make(torch.compile(copy.deepcopy(get_pruned()))), {"note": "compiled on first call"}),
        "ort": lambda: (make(get_pruned(), backend="onnxruntime", onnx_threads=cfg.threads), {}),
        "ort-int8": lambda: _int8_estimator(get_pruned(), stage2, cfg, name, workdir, model, untracked),
    }
    for v in cfg.variants:
        t0 = time.perf_counter()
        try:
            est, notes = builders[v]()
        except Exception as e:  # noqa: BLE001 - a variant that cannot be built is reported, not fatal
            _logger.warning("%s: cannot build (%s: %s)", v, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            out[v] = (None, {"error": f"{type(e).__name__}: {e}"[:300]})
            continue
        notes["build_s"] = round(time.perf_counter() - t0, 2)
        out[v] = (est, notes)
    return out


def _default_estimator(est: PoseEstimator):
    return est, {"precision": est.precision}


def _int8_estimator(stage1, stage2, cfg: FastpathConfig, name: str, workdir: Path, model: ModelConfig,
                    track: TrackConfig):
    d = workdir / "int8"
    export_onnx(stage1, stage2, d, cfg.size, name, dynamic_hw=False)
    try:
        calib = calibration_images(cfg.calib_dir, cfg.calib_images, cfg.size)
    except ValueError as e:
        raise UserError(str(e)) from None
    quantize_stage1_int8(d, calib, cfg.calib_method)
    est = PoseEstimator(replace(model, backend="onnxruntime", onnx_dir=str(d), onnx_threads=cfg.threads), track=track)
    return est, {"calibration_images": len(calib), "calibration_from": str(cfg.calib_dir),
                 "calibration_method": cfg.calib_method}


# --------------------------------------------------------------------------- measurement

def _stage1_maps(est: PoseEstimator, frame: np.ndarray) -> list[np.ndarray]:
    """The maps a variant gives for one frame (for the agreement with fp32)."""
    return list(est.runner([letterbox(frame, est.input_size)[0]])[:3])


def run_benchmark(stage1: Stage1Net, stage2, model_name: str, cfg: FastpathConfig) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    frames = read_frames(cfg.video, cfg.frames, stride=5)
    load_before = _loadavg()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xnect-fastpath-") as tmp:
        built = build_variants(stage1, stage2, cfg, model_name, Path(tmp))
        ests = {v: e for v, (e, _) in built.items() if e is not None}
        # warm-up (torch.compile compiles here; its time is reported apart)
        for v, est in ests.items():
            t0 = time.perf_counter()
            for f in frames[:cfg.warmup]:
                est.detect_batch([f])
            built[v][1]["warmup_s"] = round(time.perf_counter() - t0, 2)
            _logger.info("%s ready (warm-up %.1f s)", v, built[v][1]["warmup_s"])
        net_ms: dict[str, list[float]] = {v: [] for v in ests}
        e2e_ms: dict[str, list[float]] = {v: [] for v in ests}
        for r in range(cfg.rounds):
            for f in frames:
                for v, est in ests.items():  # interleaved frame by frame
                    t0 = time.perf_counter()
                    res = est.detect_batch([f])[0]
                    e2e_ms[v].append((time.perf_counter() - t0) * 1000)
                    net_ms[v].append(res.timings_ms["stage1"])
            _logger.info("round %d/%d done", r + 1, cfg.rounds)
        ref = {i: _stage1_maps(ests["fp32"], f) for i, f in enumerate(frames[:3])} if "fp32" in ests else {}
        results: dict[str, Any] = {}
        for v, (est, notes) in built.items():
            row: dict[str, Any] = dict(notes)
            if est is not None:
                net, e2e = statistics.median(net_ms[v]), statistics.median(e2e_ms[v])
                row.update(net_ms=round(net, 2), net_fps=round(1000 / net, 3), e2e_ms=round(e2e, 2),
                           e2e_fps=round(1000 / e2e, 3))
                if ref:
                    row["max_map_diff_vs_fp32"] = _map_diff(est, frames, ref)
            results[v] = row
        if "fp32" in results and "net_fps" in results["fp32"]:
            base = results["fp32"]
            for row in results.values():
                if "net_fps" in row:
                    row["net_speedup"] = round(row["net_fps"] / base["net_fps"], 3)
                    row["e2e_speedup"] = round(row["e2e_fps"] / base["e2e_fps"], 3)
        if cfg.ap:
            for v, est in ests.items():
                t0 = time.perf_counter()
                ev = evaluate_coco(est, cfg.coco_dev)
                results[v]["ap_body"] = round(ev["ap_body"], 4)
                results[v]["ap"] = round(ev["ap"], 4)
                _logger.info("%s: body AP %.4f (%.0f s)", v, ev["ap_body"], time.perf_counter() - t0)
            if "ap_body" in results.get("fp32", {}):
                for row in results.values():
                    if "ap_body" in row:
                        row["ap_body_change"] = round(row["ap_body"] - results["fp32"]["ap_body"], 4)
    return {
        "benchmark": "fastpath", "model": model_name, "video": str(cfg.video), "input_size": list(cfg.size),
        "frames": len(frames), "rounds": cfg.rounds, "threads": cfg.threads,
        "variants": results,
        "best": _best(results),
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "onnxruntime": _ort_version(),
                    "loadavg_before": load_before, "loadavg_after": _loadavg()},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def _map_diff(est: PoseEstimator, frames: list[np.ndarray], ref: dict[int, list[np.ndarray]]) -> float:
    """Largest |variant - fp32| over the maps of the first frames, relative to fp32's range."""
    worst = 0.0
    for i, maps in ref.items():
        for a, b in zip(_stage1_maps(est, frames[i]), maps):
            worst = max(worst, float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-6)))
    return round(worst, 6)


def _best(results: dict[str, Any]) -> dict[str, Any] | None:
    rows = [(v, r) for v, r in results.items() if "net_fps" in r and v != "fp32"]
    if not rows:
        return None
    v, r = max(rows, key=lambda vr: vr[1]["e2e_fps"])
    return {"variant": v, "e2e_speedup": r.get("e2e_speedup"), "net_speedup": r.get("net_speedup"),
            "ap_body_change": r.get("ap_body_change")}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _ort_version() -> str | None:
    try:
        import onnxruntime
        return onnxruntime.__version__
    except ImportError:
        return None


def format_report(rep: dict[str, Any]) -> str:
    lines = [f"fastpath on {Path(rep['video']).name}: {rep['frames']} frames x {rep['rounds']} rounds, input "
             f"{'x'.join(map(str, rep['input_size']))}, {rep['threads']} threads, model {rep['model']}",
             f"{'variant':16s}{'net fps':>9s}{'x':>7s}{'e2e fps':>9s}{'x':>7s}{'map diff':>10s}{'body AP':>9s}"]
    for v, r in rep["variants"].items():
        if "error" in r:
            lines.append(f"{v:16s}  failed: {r['error'][:80]}")
            continue
        ap = f"{r['ap_body']:9.3f}" if "ap_body" in r else f"{'-':>9s}"
        lines.append(f"{v:16s}{r['net_fps']:9.2f}{r.get('net_speedup', 1.0):7.2f}{r['e2e_fps']:9.2f}"
                     f"{r.get('e2e_speedup', 1.0):7.2f}{r.get('max_map_diff_vs_fp32', 0.0):10.2g}{ap}")
    m = rep["machine"]
    lines.append(f"machine: {m['cpus']} CPUs, load average {m['loadavg_before']} -> {m['loadavg_after']}, "
                 f"torch {m['torch']}, onnxruntime {m['onnxruntime']}; wall {rep['wall_s']} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line

def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options; pass a subparser to mount it under `xnect-bench fastpath`."""
    p = parser or OneLineParser(prog="xnect-bench fastpath", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, only=SOURCE_OPTIONS, title="model (default: the bundled weights in models/)")
    add_video_arg(p)
    p.add_argument("--input-size", type=input_size, default=(512, 320), metavar="WxH", help="default 512x320")
    p.add_argument("--frames", type=positive_int, default=12, help="frames per round (default: %(default)s)")
    p.add_argument("--rounds", type=positive_int, default=2, help="rounds over the frames (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch and ONNX Runtime "
                   "(default: torch's current setting)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated subset of: " + ", ".join(VARIANTS))
    p.add_argument("--int8-calibration", choices=sorted(INT8_CALIBRATION_METHODS), default="entropy",
                   help="activation range calibration for ort-int8 (default: %(default)s)")
    p.add_argument("--no-ap", action="store_true", help="skip the body-joint AP on coco_dev")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="data folder with coco_dev/ and "
                   f"coco_train_extra/ (default: {DATA_ROOT})")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("--out", type=Path, metavar="PATH", help="also write the JSON document to PATH")
    return p


def _networks(args: argparse.Namespace):
    m = model_config(args)
    try:
        s1, s2, name = load_networks(m.weights, m.checkpoint, m.random_init, m.backbone, m.seed)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(cli_hint(str(e))) from None
    except KeyError as e:  # unknown backbone name
        raise UserError(str(e.args[0])) from None
    return s1.eval(), (s2.eval() if s2 is not None else None), name


def run(args: argparse.Namespace) -> int:
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise UsageError(f"--variants: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(VARIANTS)}")
    if "fp32" not in variants:
        variants = ("fp32",) + variants  # every ratio is against fp32
    if args.frames < 1 or args.rounds < 1:
        raise UsageError("--frames and --rounds must be at least 1")
    require_video(args.video)
    coco_dev = args.data / "coco_dev"
    if not args.no_ap and not coco_dev.is_dir():
        raise UserError(f"{coco_dev}: not found (pass --data or --no-ap)")
    cfg = FastpathConfig(video=args.video, frames=args.frames, rounds=args.rounds, size=tuple(args.input_size),
                         threads=args.threads or torch.get_num_threads(), variants=variants, ap=not args.no_ap,
                         coco_dev=coco_dev, calib_dir=args.data / "coco_train_extra",
                         calib_method=args.int8_calibration)
    stage1, stage2, name = _networks(args)
    rep = run_benchmark(stage1, stage2, name, cfg)
    doc = json.dumps(rep, indent=1)
    if args.out:
        atomic_write_text(args.out, doc + "\n")
    print(doc if args.json else format_report(rep))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("xnect_app").setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        fail("xnect-bench fastpath", str(e), exit_code(e))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
