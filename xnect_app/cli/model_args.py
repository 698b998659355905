"""Model options shared by the command-line programs, and the one-line error convention."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, NoReturn

from ..motion_mask import DEFAULT_MARGIN
from ..pose.paf import GroupingConfig

DEFAULT_INPUT_SIZE = (512, 320)
DEFAULT_MIN_SCORE = GroupingConfig.min_score


def input_size(text: str) -> tuple[int, int]:
    """argparse type for WIDTHxHEIGHT, both multiples of 16."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (e.g. 512x320)")
    w, h = int(m.group(1)), int(m.group(2))
    if w < 32 or h < 32 or w % 16 or h % 16:
        raise argparse.ArgumentTypeError(f"{w}x{h}: width and height must be multiples of 16, at least 32")
    return w, h


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) for bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def whole_number(minimum: int):
    """argparse type for a whole number >= minimum."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{v} must be at least {minimum}")
        return v
    parse.__name__ = f"whole number >= {minimum}"
    return parse


positive_int = whole_number(1)
non_negative_int = whole_number(0)


def ranged(convert, what: str, inside, shown: str):
    """argparse type: `convert(text)` ("is not `what`" if it fails) that `inside` accepts
    ("is not in `shown`" otherwise)."""
    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not inside(v):
            raise argparse.ArgumentTypeError(f"{v} is not in {shown}")
        return v
    parse.__name__ = f"{what} in {shown}"
    return parse


cells = ranged(int, "a whole number", lambda v: 0 <= v <= 16, "0..16")         # mask margins
score = ranged(float, "a number", lambda v: 0.0 <= v < 1.0, "[0, 1)")          # person scores
fraction = ranged(float, "a number", lambda v: 0.0 < v <= 1.0, "(0, 1]")       # shares


def scale_list(text: str) -> tuple[float, ...]:
    """argparse type for comma-separated test scales, each in (0, 2]."""
    try:
        scales = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers (e.g. 1,0.75,0.5)"
                                         ) from None
    bad = [s for s in scales if not 0.0 < s <= 2.0]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]} is not in (0, 2]")
    return scales


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--weights", metavar="PATH", help="weights file (default: the bundled model in models/)")
    g.add_argument("--random-weights", action="store_true",
                   help="use an untrained, randomly initialised (seeded) network, for testing the tools only")
    g.add_argument("--seed", type=int, default=0,
                   help="seed for --random-weights: the same untrained network every run")
    g.add_argument("--backbone", default="selecsls60",
                   help="SelecSLS variant for --random-weights (weights files carry their own)")
    g.add_argument("--input-size", type=input_size, default=DEFAULT_INPUT_SIZE, metavar="WxH",
                   help="network input size, multiples of 16 (default 512x320)")
    g.add_argument("--min-score", type=score, default=DEFAULT_MIN_SCORE, metavar="S",
                   help="drop people whose score (about 1 for a clear, whole person) is below S "
                        "(default %(default)s; 0.3 drops more false detections and some real people)")
    g.add_argument("--fov", type=float, default=None, metavar="DEG",
                   help="horizontal field of view of the camera in degrees (metric 3D depends on it; "
                        "default: the estimator's)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps")
    g.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="run the networks with torch (default) or ONNX Runtime (the [onnx] extra)")
    add_precision_arg(g)
    g.add_argument("--onnx-dir", metavar="DIR",
                   help="with --backend onnxruntime: a folder written by `xnect-export onnx` "
                        "(default: export the loaded weights in memory)")
    add_flip_arg(g)
    g.add_argument("--scales", type=scale_list, default=None, metavar="S,S,...",
                   help="multi-scale test: run Stage I at these multiples of --input-size and keep the strongest "
                        "response per cell, e.g. 1,0.75,0.5 (more accurate for large people, 2x the Stage I time; "
                        "not with --dynconv)")
    add_dynconv_args(g)


def add_flip_arg(group) -> None:
    group.add_argument("--flip", action="store_true",
                       help="flip test: also run Stage I on the mirrored frame and average the two (more accurate "
                            "2D at twice the Stage I time; not with --dynconv)")
    group.add_argument("--flip-scale", type=fraction,
                       default=None, metavar="S",
                       help="flip test with the mirror at S times the size, e.g. 0.625: about 1.6x the Stage I time "
                            "instead of 2x, for large people (small ones fade; implies --flip)")


def flip_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """--flip / --flip-scale as PoseEstimator keywords ({} with neither)."""
    scale = getattr(args, "flip_scale", None)
    if not getattr(args, "flip", False) and scale is None:
        return {}
    return {"flip_test": True, "flip_scale": scale or 1.0}


def add_precision_arg(group) -> None:
    group.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help="Stage I arithmetic on the CPU: bf16 (bfloat16, about 1.9x faster where the CPU has "
                            "bfloat16 instructions, the same accuracy), fp32, or auto (default): bf16 on such "
                            "CPUs with the torch backend, else fp32")


def add_dynconv_args(group) -> None:
    group.add_argument("--dynconv", action="store_true",
                       help="DynConv: compute Stage I only where people are: where the frame moves (video "
                            "from a static camera) or where the weights' mask unit expects them (images); "
                            "see --dynconv-mask")
    group.add_argument("--dynconv-mask", choices=("auto", "learned", "motion"), default="auto",
                       help="with --dynconv: where the mask comes from: the weights' mask unit (learned) or "
                            "motion against a background learnt from past frames (static cameras; any "
                            "weights); auto (default): motion for video, the mask unit for images or with "
                            "--dynconv-budget")
    group.add_argument("--dynconv-budget", type=fraction, default=None, metavar="F",
                       help="with --dynconv (learned masks): compute at most this share of the frame")
    group.add_argument("--dynconv-margin", type=cells, default=None, metavar="N",
                       help="with motion masks: also compute N stride-8 cells around the motion "
                            f"(default {DEFAULT_MARGIN}; larger is slower and closer to the dense result)")


def dynconv_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "dynconv_budget", None) is not None and not getattr(args, "dynconv", False):
        raise UserError("--dynconv-budget needs --dynconv")
    margin = getattr(args, "dynconv_margin", None)
    if margin is not None and not (getattr(args, "dynconv", False) and getattr(args, "dynconv_mask", "") != "learned"):
        raise UserError("--dynconv-margin needs --dynconv with motion masks")
    if not getattr(args, "dynconv", False):
        return {}
    return {"dynconv": getattr(args, "dynconv_mask", "auto"), "dynconv_budget": args.dynconv_budget,
            **({"dynconv_margin": margin} if margin is not None else {})}


def estimator_kwargs(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    """PoseEstimator keyword arguments from parsed options (picklable, for worker processes)."""
    if args.weights and args.random_weights:
        raise UserError("--weights and --random-weights exclude each other")
    kw: dict[str, Any] = dict(weights=args.weights, backbone=args.backbone, input_size=tuple(args.input_size),
                              device=args.device, random_init=bool(args.random_weights))
    if args.random_weights:
        kw["seed"] = args.seed
    if args.fov is not None:
        kw["fov"] = args.fov
    if hasattr(args, "min_score"):
        kw["min_score"] = args.min_score
    if getattr(args, "backend", "torch") != "torch":
        kw["backend"] = args.backend
    if getattr(args, "precision", "auto") != "auto":
        kw["precision"] = args.precision
    if getattr(args, "onnx_dir", None):
        if kw.get("backend") != "onnxruntime":
            raise UserError("--onnx-dir needs --backend onnxruntime")
        kw["onnx_dir"] = args.onnx_dir
    kw.update(dynconv_kwargs(args))
    flip = flip_kwargs(args)
    scales = getattr(args, "scales", None)
    for flag, given in (("--flip", bool(flip)), ("--scales", scales is not None)):
        if given and kw.get("dynconv"):
            raise UserError(f"{flag} runs Stage I on whole frames: it cannot be combined with --dynconv")
    kw.update(flip)
    if scales is not None:
        kw["test_scales"] = scales
    kw.update(overrides)
    return kw


def build_estimator(**kw: Any):
    """PoseEstimator(**kw); user mistakes (missing weights, bad options) become UserError."""
    from ..estimator import PoseEstimator
    kw = dict(kw)
    seed = kw.pop("seed", None)
    if kw.get("random_init"):
        import torch
        torch.manual_seed(seed or 0)  # untrained, but the same network every run (reproducible tests)
    try:
        return PoseEstimator(**kw)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    except KeyError as e:  # unknown backbone name
        raise UserError(str(e.args[0]) if e.args else str(e)) from None
    except ValueError as e:
        raise UserError(str(e)) from None
    except ImportError as e:  # e.g. --backend onnxruntime without the [onnx] extra
        raise UserError(str(e)) from None
    except RuntimeError as e:
        if "device" in str(e).lower() or "cuda" in str(e).lower():
            raise UserError(f"device {kw.get('device')!r}: {str(e).splitlines()[0]}") from None
        raise


def run_cli(prog: str, parser: argparse.ArgumentParser, run, argv: list[str] | None = None,
            user_errors: tuple[type[BaseException], ...] = (), say_interrupted: bool = False) -> int:
    """Parse argv and call run(args): UserError (and `user_errors`) become a one-line error with
    exit status 1, Ctrl-C exits with 130."""
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (UserError, *user_errors) as e:
        fail(prog, str(e))
    except KeyboardInterrupt:
        if say_interrupted:
            print(f"{prog}: interrupted", file=sys.stderr)
        return 130


class UserError(Exception):
    """A mistake the user can fix; reported as one line, never a traceback."""


def fail(prog: str, message: str, code: int = 1) -> NoReturn:
    print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)
    raise SystemExit(code)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())
