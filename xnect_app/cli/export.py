"""xnect-export: the pose networks in formats other runtimes load.

examples:
  xnect-export onnx --out onnx_out                                  # the bundled model, 512x320
  xnect-export onnx --weights models/xnect_selecsls60.pt --out onnx_out
  xnect-export onnx --checkpoint runs/xnect60/last.pt --out onnx_out  # a Stage I training checkpoint
  xnect-export onnx --random-weights --backbone selecsls42b --input-size 256x160 --out /tmp/onnx
  xnect-export onnx --int8 --calibration my_camera_frames/ --out onnx_int8   # int8 core, fixed size
  xnect-export int8 --weights my.pt --images my_camera_frames/   # ranges for --precision int8

The result runs end to end with `--backend onnxruntime --onnx-dir onnx_out` (every tool), or
anywhere ONNX Runtime runs: xnect_onnx.json in the directory describes inputs, outputs, joint sets
and decoding.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from ..options import (DEFAULT_INPUT_SIZE, SOURCE_OPTIONS, OneLineParser, UsageError, UserError, add_model_args,
                       cli_hint, exit_code, input_size, model_config, positive_int)
from ..runtime.onnx import (DEFAULT_OPSET, OnnxNetworks, OnnxUnavailable, calibration_images, compare_with_torch,
                            export_onnx, quantize_stage1_int8)
from ..weights import load_networks

# Largest |onnxruntime - torch| allowed by the export check, relative to the output's range.
CHECK_RELATIVE_TOLERANCE = 1e-3
# With --int8: quantisation moves the maps by ~10-30% of their range (the body AP on coco_dev did
# not drop); a broken quantisation moves them by ~100%.
INT8_CHECK_RELATIVE_TOLERANCE = 0.5


class _Failure(Exception):
    """A one-line error with exit status 1 (an input, the weights or the export failed)."""


def _fail(prog: str, message: str, code: int = 1):
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(code)


def add_onnx(subparsers) -> None:
    p = subparsers.add_parser(
        "onnx", help="Stage I (dense) and Stage II to ONNX, with a JSON sidecar",
        description="Exports Stage I (BGR float 0..255, N x 3 x H x W -> heatmaps, PAFs, 3D encodings at\n"
                    "stride 8; dynamic batch and, unless --static-size, dynamic height/width in\n"
                    "multiples of 16) and Stage II (dynamic number of people) to ONNX, writes\n"
                    "xnect_onnx.json beside them, then checks ONNX Runtime against torch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  xnect-export onnx --out onnx_out\n"
               "  xnect-export onnx --random-weights --input-size 256x160 --out /tmp/onnx")
    add_model_args(p, only=SOURCE_OPTIONS, title="model (default: the bundled weights in models/)")
    p.add_argument("--input-size", type=input_size, default=DEFAULT_INPUT_SIZE, metavar="WxH",
                   help="input size recorded in the sidecar and traced with, multiples of 16 (default 512x320)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created if needed)")
    p.add_argument("--static-size", action="store_true",
                   help="fix height and width to --input-size (batch stays dynamic)")
    p.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default: 17)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs torch comparison")
    q = p.add_argument_group("int8 (static quantisation of the SelecSLS core; implies --static-size)")
    q.add_argument("--int8", action="store_true",
                   help="quantise Stage I's core to int8, calibrated on --calibration images; heads stay "
                        "fp32 (on our AVX-512 test CPU: same body AP, only 1.03x the speed of fp32 ONNX Runtime)")
    q.add_argument("--calibration", type=Path, metavar="DIR",
                   help="folder of images like those the model will see (jpg/png; e.g. frames of your camera)")
    q.add_argument("--calibration-images", type=positive_int, default=16, metavar="N",
                   help="images used for calibration (default: %(default)s)")
    q.add_argument("--calibration-method", choices=("entropy", "minmax", "percentile"), default="entropy",
                   help="activation range calibration (default: %(default)s)")
    p.set_defaults(func=run_onnx)


def _load_networks(args: argparse.Namespace):
    """(stage1, stage2 or None, model name) from the chosen source; _Failure for user mistakes."""
    m = model_config(args)  # a UsageError (exit 2) for options that exclude each other
    try:
        nets = load_networks(m.weights, m.checkpoint, m.random_init, m.backbone, m.seed)
    except (FileNotFoundError, ValueError) as e:
        raise _Failure(cli_hint(str(e))) from None
    except KeyError as e:  # unknown backbone name
        raise _Failure(str(e.args[0]) if e.args else str(e)) from None
    if m.random_init:
        return nets.stage1, None, f"{m.backbone} (random init, untrained, seed {m.seed})"
    return nets


def run_onnx(args: argparse.Namespace) -> int:
    log = logging.getLogger("xnect_app.runtime.onnx")
    if args.opset is not None and not 13 <= args.opset <= 21:
        raise UsageError(f"--opset {args.opset}: choose 13..21")
    if args.int8 and args.calibration is None:
        raise UsageError("--int8 needs --calibration DIR (images like those the model will see)")
    if args.calibration is not None and not args.int8:
        raise UsageError("--calibration is for --int8")
    if args.out.exists() and not args.out.is_dir():
        raise _Failure(f"--out {args.out}: exists and is not a directory")
    calib = None
    if args.int8:
        try:
            calib = calibration_images(args.calibration, args.calibration_images, args.input_size)
        except ValueError as e:
            raise _Failure(str(e)) from None
    stage1, stage2, name = _load_networks(args)
    try:
        meta = export_onnx(stage1, stage2, args.out, args.input_size, name,
                           dynamic_hw=not (args.static_size or args.int8), opset=args.opset or DEFAULT_OPSET)
        if calib is not None:
            log.info("calibrating int8 on %d images (%s)", len(calib), args.calibration_method)
            meta = quantize_stage1_int8(args.out, calib, args.calibration_method)
    except OnnxUnavailable as e:
        raise _Failure(str(e)) from None
    files = [args.out / meta["stage1"]["file"]] + ([args.out / meta["stage2"]["file"]] if meta["stage2"] else [])
    for f in files:
        print(f"wrote {f} ({f.stat().st_size / 1e6:.1f} MB)")
    print(f"wrote {args.out / 'xnect_onnx.json'}")
    if args.no_check:
        return 0
    try:
        nets = OnnxNetworks(args.out)
    except OnnxUnavailable as e:
        log.warning("not checked: %s", e)
        return 0
    w, h = args.input_size
    # int8 ranges were calibrated on real images: check on those, not on noise
    images = np.concatenate(calib[:2]) if calib else \
        np.random.default_rng(0).uniform(0, 255, (2, 3, h, w)).astype(np.float32)
    diffs = compare_with_torch(nets, stage1, stage2, images)
    print(f"check, max |onnxruntime - torch| on {'calibration images' if calib else 'random inputs'}: "
          + ", ".join(f"{k} {d['max_abs_diff']:.2g} (range {d['max_abs_ref']:.2g})" for k, d in diffs.items()))
    tolerance = INT8_CHECK_RELATIVE_TOLERANCE if args.int8 else CHECK_RELATIVE_TOLERANCE
    bad = [k for k, d in diffs.items()
           if not d["max_abs_diff"] <= tolerance * max(d["max_abs_ref"], 1e-3)]
    if bad:
        raise _Failure(f"ONNX Runtime disagrees with torch on {', '.join(bad)}; the export is not usable")
    return 0


def add_int8(subparsers) -> None:
    p = subparsers.add_parser(
        "int8", help="activation ranges of a weights file for --precision int8 (torch, x86)",
        description="Calibrates the int8 core of `--precision int8` (PyTorch x86 quantisation of the\n"
                    "SelecSLS core; the heads stay bfloat16) on images like those the model will\n"
                    "see, and writes the ranges beside the weights file (<weights stem>.int8.json),\n"
                    "where every tool finds them. The bundled weights come with theirs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  xnect-export int8 --weights my.pt --images my_camera_frames/\n"
               "  xnect-process video.mp4 --weights my.pt --precision int8")
    add_model_args(p, only=("weights",), title="model (default: the bundled weights in models/)")
    p.add_argument("--images", required=True, type=Path, metavar="DIR",
                   help="folder of calibration images (jpg/png; e.g. frames of your camera)")
    p.add_argument("--count", type=positive_int, default=64, metavar="N",
                   help="images used for calibration (default: %(default)s)")
    p.add_argument("--input-size", type=input_size, default=DEFAULT_INPUT_SIZE, metavar="WxH",
                   help="size the images are letterboxed to (default 512x320)")
    p.add_argument("--out", type=Path, default=None, metavar="PATH",
                   help="where to write the ranges (default: beside the weights file)")
    p.set_defaults(func=run_int8)


def run_int8(args: argparse.Namespace) -> int:
    from ..runtime.int8 import calibrate, file_digest, ranges_path, save_ranges
    from ..weights import default_weights_path
    try:
        calib = calibration_images(args.images, args.count, args.input_size)
    except ValueError as e:
        raise _Failure(str(e)) from None
    stage1, _, _ = _load_networks(args)
    weights = Path(args.weights) if args.weights else default_weights_path()
    ranges = calibrate(stage1, calib) | {"weights_sha1": file_digest(weights)}
    path = save_ranges(ranges, args.out or ranges_path(weights))
    print(f"wrote {path} ({len(calib)} calibration images)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="xnect-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_onnx(sub)
    add_int8(sub)
    for name, sp in sub.choices.items():
        sp.set_defaults(prog=f"xnect-export {name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if not args.quiet:
        logging.getLogger("xnect_app.runtime.onnx").setLevel(logging.INFO)
    try:
        return args.func(args)
    except (_Failure, UserError) as e:  # UsageError: exit 2
        _fail(args.prog, str(e), exit_code(e))
    except ValueError as e:  # e.g. an input size the network cannot take
        _fail(args.prog, str(e))
    except OSError as e:  # e.g. --out on a read-only file system
        _fail(args.prog, f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
