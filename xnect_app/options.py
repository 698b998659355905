"""Command-line options shared by every tool (cli/, bench/): the one model-options group, built from
`ModelConfig` and `DecodeConfig`, argparse types, the data folder default, and the one-line error
convention.

    add_model_args(parser)                      # the "model" group, the same in every tool
    args = parser.parse_args()
    est = build_estimator(model_config(args), decode_config(args), TrackConfig(tracking=False))
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, NoReturn

from .estimator import DEFAULT_MIN_SCORE, DecodeConfig, PoseEstimator, TrackConfig
from .pose.tracking import TrackerConfig
from .runtime.config import BACKENDS, DYNCONV_MASKS, ModelConfig
from .runtime.motion import DEFAULT_MARGIN
from .runtime.precision import PRECISIONS

__all__ = ["DATA_ROOT", "DEFAULT_INPUT_SIZE", "DEFAULT_MIN_SCORE", "OneLineParser", "UserError", "UsageError",
           "EXIT_FAILURE", "EXIT_USAGE", "exit_code", "cli_hint", "fail", "run_cli",
           "input_size", "whole_number", "positive_int", "non_negative_int", "ranged", "cells", "score", "fraction",
           "scale_list", "seconds", "add_model_args", "model_config", "decode_config", "build_estimator", "model_signature",
           "add_track_args", "tracker_config", "tracker_signature",
           "MODEL_FIELD_OPTIONS", "SOURCE_OPTIONS"]

# Where the datasets are unless a tool is told otherwise: the only place that names this folder.
DATA_ROOT = "../shared/data"
DEFAULT_INPUT_SIZE = ModelConfig.input_size


# --------------------------------------------------------------------------- argparse types

def input_size(text: str) -> tuple[int, int]:
    """argparse type for WIDTHxHEIGHT, both multiples of 16."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (e.g. 512x320)")
    w, h = int(m.group(1)), int(m.group(2))
    if w < 32 or h < 32 or w % 16 or h % 16:
        raise argparse.ArgumentTypeError(f"{w}x{h}: width and height must be multiples of 16, at least 32")
    return w, h


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
seconds = ranged(float, "a number", lambda v: 0.0 < v <= 3600.0, "(0, 3600]")   # durations


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


# --------------------------------------------------------------------------- the model group

# The options of each ModelConfig / DecodeConfig field (every field but torch_thread, which no
# command line needs: the tools run their networks on the torch thread, the benches choose).
MODEL_FIELD_OPTIONS = {
    "weights": ("--weights",), "checkpoint": ("--checkpoint",), "random_init": ("--random-weights",),
    "seed": ("--seed",), "backbone": ("--backbone",), "input_size": ("--input-size",), "device": ("--device",),
    "backend": ("--backend",), "onnx_dir": ("--onnx-dir",), "onnx_threads": ("--onnx-threads",),
    "precision": ("--precision",), "dynconv": ("--dynconv", "--dynconv-mask"), "dynconv_budget": ("--dynconv-budget",),
    "dynconv_margin": ("--dynconv-margin",), "flip_test": ("--flip",), "flip_scale": ("--flip-scale",),
    "test_scales": ("--scales",), "min_score": ("--min-score",), "fov": ("--fov",),
}
# The weights options alone (tools that take networks but run them their own way: export, fastpath)
SOURCE_OPTIONS = ("weights", "checkpoint", "random_init", "seed", "backbone")


def add_model_args(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None,
                   title: str = "model") -> argparse._ArgumentGroup:
    """The "model" option group: one option per field of MODEL_FIELD_OPTIONS (or of `only`)."""
    g = parser.add_argument_group(title)
    want = set(MODEL_FIELD_OPTIONS if only is None else only)
    add = {
        "weights": lambda: g.add_argument("--weights", metavar="PATH",
                                          help="weights file (default: the bundled model in models/)"),
        "checkpoint": lambda: g.add_argument(
            "--checkpoint", metavar="PATH",
            help="a Stage I training checkpoint (runs/.../last.pt) instead of --weights: its moving average "
                 "when it keeps one, without Stage II"),
        "random_init": lambda: g.add_argument(
            "--random-weights", action="store_true",
            help="use an untrained, randomly initialised (seeded) network, for testing the tools only"),
        "seed": lambda: g.add_argument("--seed", type=int, default=0,
                                       help="seed for --random-weights: the same untrained network every run"),
        "backbone": lambda: g.add_argument("--backbone", default=ModelConfig.backbone,
                                           help="SelecSLS variant for --random-weights (weights files carry "
                                                "their own)"),
        "input_size": lambda: g.add_argument("--input-size", type=input_size, default=DEFAULT_INPUT_SIZE,
                                             metavar="WxH",
                                             help="network input size, multiples of 16 (default 512x320)"),
        "min_score": lambda: g.add_argument(
            "--min-score", type=score, default=DEFAULT_MIN_SCORE, metavar="S",
            help="drop people whose score (about 1 for a clear, whole person) is below S "
                 "(default %(default)s; 0.3 drops more false detections and some real people)"),
        "fov": lambda: g.add_argument("--fov", type=float, default=None, metavar="DEG",
                                      help="horizontal field of view of the camera in degrees (metric 3D depends "
                                           "on it; default: the estimator's)"),
        "device": lambda: g.add_argument("--device", default=ModelConfig.device,
                                         help="torch device, e.g. cpu, cuda, cuda:1, mps"),
        "backend": lambda: g.add_argument("--backend", choices=BACKENDS, default=ModelConfig.backend,
                                          help="run the networks with torch (default) or ONNX Runtime (the "
                                               "[onnx] extra)"),
        "precision": lambda: g.add_argument(
            "--precision", choices=PRECISIONS, default=ModelConfig.precision,
            help="Stage I arithmetic on the CPU: bf16 (bfloat16, about 1.9x faster where the CPU has "
                 "bfloat16 instructions, the same accuracy), int8 (the core in int8, about 1.6x faster "
                 "than bf16 on CPUs with VNNI, body AP 0.003 lower; needs the weights' ranges, "
                 "`xnect-export int8`), fp32, or auto (default): bf16 on such CPUs with the torch "
                 "backend, else fp32"),
        "onnx_dir": lambda: g.add_argument("--onnx-dir", metavar="DIR",
                                           help="with --backend onnxruntime: a folder written by `xnect-export "
                                                "onnx` (default: export the loaded weights in memory)"),
        "onnx_threads": lambda: g.add_argument("--onnx-threads", type=positive_int, default=None, metavar="N",
                                               help="with --backend onnxruntime: its intra-op threads (default: "
                                                    "one per physical core)"),
        "flip_test": lambda: g.add_argument(
            "--flip", action="store_true",
            help="flip test: also run Stage I on the mirrored frame and average the two (more accurate "
                 "2D at twice the Stage I time; not with --dynconv)"),
        "flip_scale": lambda: g.add_argument(
            "--flip-scale", type=fraction, default=None, metavar="S",
            help="flip test with the mirror at S times the size, e.g. 0.625: about 1.6x the Stage I time "
                 "instead of 2x, for large people (small ones fade; implies --flip)"),
        "test_scales": lambda: g.add_argument(
            "--scales", type=scale_list, default=None, metavar="S,S,...",
            help="multi-scale test: run Stage I at these multiples of --input-size and keep the strongest "
                 "response per cell, e.g. 1,0.75,0.5 (more accurate for large people, 2x the Stage I time; "
                 "not with --dynconv)"),
        "dynconv": lambda: (
            g.add_argument("--dynconv", action="store_true",
                           help="DynConv: compute Stage I only where people are: where the frame moves (video "
                                "from a static camera) or where the weights' mask unit expects them (images); "
                                "see --dynconv-mask"),
            g.add_argument("--dynconv-mask", choices=DYNCONV_MASKS, default="auto",
                           help="with --dynconv: where the mask comes from: the weights' mask unit (learned) or "
                                "motion against a background learnt from past frames (static cameras; any "
                                "weights); auto (default): motion for video, the mask unit for images or with "
                                "--dynconv-budget")),
        "dynconv_budget": lambda: g.add_argument(
            "--dynconv-budget", type=fraction, default=None, metavar="F",
            help="with --dynconv (learned masks): compute at most this share of the frame"),
        "dynconv_margin": lambda: g.add_argument(
            "--dynconv-margin", type=cells, default=None, metavar="N",
            help="with motion masks: also compute N stride-8 cells around the motion "
                 f"(default {DEFAULT_MARGIN}; larger is slower and closer to the dense result)"),
    }
    for name in MODEL_FIELD_OPTIONS:  # one order for every tool
        if name in want:
            add[name]()
    return g


def model_config(args: argparse.Namespace, **overrides: Any) -> ModelConfig:
    """The ModelConfig of parsed model options (those the tool has); UserError for combinations
    that cannot run."""
    a = vars(args)
    sources = [flag for flag, on in (("--weights", a.get("weights")), ("--checkpoint", a.get("checkpoint")),
                                     ("--random-weights", a.get("random_weights"))) if on]
    if len(sources) > 1:
        raise UsageError(f"{' and '.join(sources)} exclude each other")
    kw: dict[str, Any] = {}
    for name in ("weights", "checkpoint", "backbone", "input_size", "device", "backend", "precision",
                 "onnx_threads"):
        if a.get(name) is not None:
            kw[name] = a[name]
    if a.get("random_weights"):
        kw.update(random_init=True, seed=a.get("seed", 0))
    if a.get("onnx_dir"):
        if a.get("backend") != "onnxruntime":
            raise UsageError("--onnx-dir needs --backend onnxruntime")
        kw["onnx_dir"] = a["onnx_dir"]
    if a.get("dynconv_budget") is not None and not a.get("dynconv"):
        raise UsageError("--dynconv-budget needs --dynconv")
    if a.get("dynconv_margin") is not None and not (a.get("dynconv") and a.get("dynconv_mask") != "learned"):
        raise UsageError("--dynconv-margin needs --dynconv with motion masks")
    if a.get("dynconv"):
        kw.update(dynconv=a.get("dynconv_mask", "auto"), dynconv_budget=a.get("dynconv_budget"),
                  dynconv_margin=a.get("dynconv_margin"))
        for flag, given in (("--flip", a.get("flip") or a.get("flip_scale")), ("--scales", a.get("scales"))):
            if given:
                raise UsageError(f"{flag} runs Stage I on whole frames: it cannot be combined with --dynconv")
    if a.get("flip") or a.get("flip_scale"):
        kw.update(flip_test=True, flip_scale=a.get("flip_scale") or 1.0)
    if a.get("scales") is not None:
        kw["test_scales"] = a["scales"]
    kw.update(overrides)
    try:
        return ModelConfig(**kw)
    except ValueError as e:  # values or combinations of the options
        raise UsageError(str(e)) from None


def decode_config(args: argparse.Namespace, **overrides: Any) -> DecodeConfig:
    """The DecodeConfig of parsed options (--min-score, --fov; --threshold where a tool has it)."""
    a = vars(args)
    kw = {name: a[name] for name in ("min_score", "fov", "threshold") if a.get(name) is not None}
    kw.update(overrides)
    try:
        return DecodeConfig(**kw)
    except ValueError as e:
        raise UsageError(str(e)) from None


def add_track_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The "tracking" option group (pose.tracking.TrackerConfig)."""
    d = TrackerConfig()
    g = parser.add_argument_group("tracking")
    g.add_argument("--track-high-score", type=score, default=d.high_score, metavar="S",
                   help="people this sure are matched first and may start tracks; the others only continue "
                        "tracks (default %(default)s)")
    g.add_argument("--track-max-lost", type=seconds, default=d.max_lost_s, metavar="SEC",
                   help="seconds a person may be unseen (occluded, missed) and keep their id (default %(default)s)")
    g.add_argument("--track-confirm", type=positive_int, default=d.confirm_frames, metavar="N",
                   help="frames a new person must be seen before getting an id (default %(default)s; 1 gives "
                        "ids at once, with more short-lived ids for false detections)")
    g.add_argument("--track-no-colour", action="store_true",
                   help="match people by position and pose only, not by the colours of their clothes")
    return g


def tracker_config(args: argparse.Namespace) -> TrackerConfig:
    """The TrackerConfig of parsed --track-* options (defaults where the tool has none)."""
    a, d = vars(args), TrackerConfig()
    return TrackerConfig(high_score=a.get("track_high_score", d.high_score),
                         max_lost_s=a.get("track_max_lost", d.max_lost_s),
                         confirm_frames=a.get("track_confirm", d.confirm_frames),
                         use_colour=not a.get("track_no_colour"))


def tracker_signature(config: TrackerConfig) -> dict[str, Any]:
    """The tracker settings that differ from the defaults (outputs depend on them)."""
    d = TrackerConfig()
    return {k: v for k, v in vars(config).items() if v != getattr(d, k)}


def model_signature(args: argparse.Namespace) -> dict[str, Any]:
    """What outputs depend on, from parsed model options, as a plain dict (manifests compare it to
    decide about skipping): the source, input size, device and score always, every other option
    when it was given."""
    a = vars(args)
    out: dict[str, Any] = {"weights": a.get("weights"), "backbone": a.get("backbone"),
                           "input_size": tuple(a["input_size"]), "device": a.get("device"),
                           "random_init": bool(a.get("random_weights"))}
    if a.get("checkpoint"):
        out["checkpoint"] = a["checkpoint"]
    if a.get("random_weights"):
        out["seed"] = a.get("seed")
    if a.get("fov") is not None:
        out["fov"] = a["fov"]
    if "min_score" in a:
        out["min_score"] = a["min_score"]
    if a.get("backend", "torch") != "torch":
        out["backend"] = a["backend"]
    if a.get("precision", "auto") != "auto":
        out["precision"] = a["precision"]
    if a.get("onnx_dir"):
        out["onnx_dir"] = a["onnx_dir"]
    if a.get("dynconv"):
        out.update(dynconv=a.get("dynconv_mask", "auto"), dynconv_budget=a.get("dynconv_budget"))
        if a.get("dynconv_margin") is not None:
            out["dynconv_margin"] = a["dynconv_margin"]
    if a.get("flip") or a.get("flip_scale") is not None:
        out.update(flip_test=True, flip_scale=a.get("flip_scale") or 1.0)
    if a.get("scales") is not None:
        out["test_scales"] = a["scales"]
    return out


def build_estimator(model: ModelConfig, decode: DecodeConfig | None = None,
                    track: TrackConfig | None = None) -> PoseEstimator:
    """PoseEstimator(model, decode, track); user mistakes (missing weights, bad options) become UserError."""
    try:
        return PoseEstimator(model, decode, track)
    except FileNotFoundError as e:
        raise UserError(cli_hint(str(e))) from None
    except KeyError as e:  # unknown backbone name
        raise UserError(str(e.args[0]) if e.args else str(e)) from None
    except ValueError as e:
        raise UserError(str(e)) from None
    except ImportError as e:  # e.g. --backend onnxruntime without the [onnx] extra
        raise UserError(str(e)) from None
    except RuntimeError as e:
        if "device" in str(e).lower() or "cuda" in str(e).lower():
            raise UserError(f"device {model.device!r}: {str(e).splitlines()[0]}") from None
        raise


# --------------------------------------------------------------------------- errors
#
# Exit status of every console script (docs/cli.md):
#   2  usage error: the command line itself is wrong, whatever the files: an unknown flag, a bad
#      value, a missing argument (argparse), or options that cannot go together (UsageError)
#   1  the command line is fine but the run failed: a missing or unreadable input, missing
#      weights, a device that is not there, an output that cannot be written (UserError)
# Either way exactly one line on stderr, "PROG: error: MESSAGE", and no traceback.

EXIT_FAILURE = 1
EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) for bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)}\n")


class UserError(Exception):
    """A mistake the user can fix; reported as one line, never a traceback (exit status 1: an input,
    the weights or the run failed)."""


class UsageError(UserError):
    """A UserError of the command line itself: options that cannot go together, a value argparse
    let through (exit status 2, as argparse's own errors)."""


def exit_code(error: BaseException) -> int:
    """The exit status of an error: 2 for a UsageError, 1 for anything else."""
    return EXIT_USAGE if isinstance(error, UsageError) else EXIT_FAILURE


def cli_hint(message: str) -> str:
    """A library message as a command line shows it (the keyword for Python callers left out)."""
    return message.replace("random_init=True / --random-weights", "--random-weights")


def fail(prog: str, message: str, code: int = EXIT_FAILURE) -> NoReturn:
    print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)
    raise SystemExit(code)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def run_cli(prog: str, parser: argparse.ArgumentParser, run, argv: list[str] | None = None,
            user_errors: tuple[type[BaseException], ...] = (), say_interrupted: bool = False) -> int:
    """Parse argv and call run(args): UsageError becomes a one-line error with exit status 2,
    UserError (and `user_errors`) one with exit status 1; Ctrl-C exits with 130."""
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (UserError, *user_errors) as e:
        fail(prog, str(e), exit_code(e))
    except KeyboardInterrupt:
        if say_interrupted:
            print(f"{prog}: interrupted", file=sys.stderr)
        return 130
