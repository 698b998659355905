"""xnect-bench: speed and memory benchmarks, one subcommand each.

examples:
  xnect-bench pose                             # post-processing time for 1, 5, 10, 15 people
  xnect-bench pipeline --help                  # end-to-end fps on a video, threaded vs sequential
  xnect-bench tta --frames 20                  # cost of --flip and --scales against one pass
  xnect-bench backbone --quick                 # batch 1 only, a few minutes on 2 CPU cores
  xnect-bench backbone --json > backbone.json  # everything, as one JSON document
  xnect-bench backbone --models 60 --sizes 512x320 --batches 1 --runs 5 --threads 2
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from xnect_app.cli.model_args import OneLineParser, non_negative_int, positive_int, score


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(positive_int(t) for t in text.split(",") if t.strip())


def _size_list(text: str) -> tuple[tuple[int, int], ...]:
    sizes = []
    for item in text.split(","):
        parts = item.lower().strip().split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise argparse.ArgumentTypeError(f"size {item!r} is not WIDTHxHEIGHT, e.g. 512x320")
        w, h = int(parts[0]), int(parts[1])
        if w < 32 or h < 32:
            raise argparse.ArgumentTypeError(f"size {item!r}: width and height must be >= 32")
        sizes.append((w, h))
    return tuple(sizes)


# --------------------------------------------------------------------------- backbone

def add_backbone(subparsers) -> None:
    p = subparsers.add_parser(
        "backbone",
        help="SelecSLS cores vs a ResNet-50 trunk: CPU speed, BN fusion, pruning, memory",
        description="Times SelecSLS features_only cores and a ResNet-50 stem+layer1..3 trunk\n"
                    "(both stride 16) on the CPU: dense, BN-fused and pruned. Pruning a random-\n"
                    "init model removes nothing, so 'pruned-sim' first zeroes a fraction of\n"
                    "the BN gammas (a simulation). Also measures training-step peak memory.\n"
                    "Prints tables, or one JSON document with --json.",
        epilog="examples:\n  xnect-bench backbone --quick\n"
               "  xnect-bench backbone --json --out backbone.json\n"
               "  xnect-bench backbone --models 60 --sizes 512x320 --batches 1 --runs 5",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--out", type=Path, metavar="PATH",
                   help="also write the JSON document to PATH")
    p.add_argument("--quick", action="store_true", help="batch 1 only (skips batch 16)")
    p.add_argument("--runs", type=positive_int, default=3, metavar="N",
                   help="timed runs per measurement (default: %(default)s)")
    p.add_argument("--warmup", type=non_negative_int, default=1, metavar="N",
                   help="untimed warm-up runs (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, metavar="T",
                   help="torch CPU threads (default: torch's current setting)")
    p.add_argument("--models", default="selecsls42b,selecsls60,selecsls84", metavar="NAMES",
                   help="comma-separated SelecSLS variants; ResNet-50 is always added "
                        "(default: %(default)s)")
    p.add_argument("--sizes", type=_size_list, default="512x320,224x224", metavar="WxH[,WxH]",
                   help="input sizes (default: %(default)s)")
    p.add_argument("--batches", type=_int_list, default="1,16", metavar="N[,N]",
                   help="batch sizes (default: %(default)s; --quick: 1)")
    p.add_argument("--sim-sparsity", type=score, default=0.15, metavar="F",
                   help="fraction of each layer's channels zeroed for the simulated-pruning "
                        "variant; 0 turns it off (default: %(default)s)")
    p.add_argument("--no-memory", action="store_true", help="skip the training-memory measurement")
    p.set_defaults(func=run_backbone)


def run_backbone(args: argparse.Namespace) -> int:
    import torch

    from xnect_app.bench.backbone import BackboneBenchConfig, format_report, run_benchmark
    from xnect_app.nn.selecsls import resolve_name

    try:
        models = tuple(resolve_name(m.strip()) for m in args.models.split(",") if m.strip())
    except KeyError as e:
        _fail(args, e.args[0])
    if not models:
        _fail(args, "--models is empty")
    cfg = BackboneBenchConfig(
        models=models, sizes=args.sizes, batches=(1,) if args.quick else args.batches,
        runs=args.runs, warmup=args.warmup, threads=args.threads or torch.get_num_threads(),
        sim_sparsity=args.sim_sparsity, memory=not args.no_memory)
    report = run_benchmark(cfg)
    document = json.dumps(report, indent=1)
    if args.out:
        from xnect_app.io.sinks import atomic_write_text
        atomic_write_text(args.out, document + "\n")
    print(document if args.json else format_report(report))
    return 0


# --------------------------------------------------------------------------- pose, pipeline

def add_pose(subparsers) -> None:
    p = subparsers.add_parser(
        "pose", help="decode + root + tracking + skeleton fit time for 1..15 synthetic people",
        description="Times the numpy/scipy post-processing (peaks, PAF grouping, 3D read-out,\n"
                    "root translation, tracking with One Euro filters, skeleton fit) on 64x40\n"
                    "maps rendered from synthetic scenes.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--people", type=_int_list, default="1,5,10,15", metavar="N[,N]")
    p.add_argument("--runs", type=positive_int, default=30, metavar="N")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_pose)


def run_pose(args: argparse.Namespace) -> int:
    from xnect_app.bench.pose import run_pose_bench

    if any(n > 50 for n in args.people):
        _fail(args, "--people counts must be between 1 and 50")
    run_pose_bench(tuple(args.people), runs=args.runs, json_out=args.json)
    return 0


def add_pipeline(subparsers) -> None:
    from xnect_app.bench import pipeline as bench_pipeline

    p = subparsers.add_parser("pipeline", help="threaded pipeline vs a sequential loop on a video",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_pipeline.build_parser(p)
    p.set_defaults(func=bench_pipeline.run)


def add_dynconv(subparsers) -> None:
    from xnect_app.bench import dynconv as bench_dynconv

    p = subparsers.add_parser("dynconv", help="DynConv sparse vs dense Stage I on a video, side by side",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_dynconv.build_parser(p)
    p.set_defaults(func=bench_dynconv.run)


def add_tta(subparsers) -> None:
    from xnect_app.bench import tta as bench_tta

    p = subparsers.add_parser("tta", help="single pass vs --flip / --scales on a video, side by side",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_tta.build_parser(p)
    p.set_defaults(func=bench_tta.run)


def add_fastpath(subparsers) -> None:
    from xnect_app.bench import fastpath as bench_fastpath

    p = subparsers.add_parser("fastpath", help="fp32 vs fused/pruned/channels-last/compiled/ONNX Runtime/int8",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_fastpath.build_parser(p)
    p.set_defaults(func=bench_fastpath.run)


# --------------------------------------------------------------------------- entry point

def _fail(args: argparse.Namespace, message: str):
    print(f"{args.prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="xnect-bench", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_backbone(sub)
    add_pose(sub)
    add_pipeline(sub)
    add_dynconv(sub)
    add_fastpath(sub)
    add_tta(sub)
    for name, sp in sub.choices.items():
        sp.set_defaults(prog=f"xnect-bench {name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if not args.quiet:
        logging.getLogger("xnect_app.bench").setLevel(logging.INFO)
    from xnect_app.cli.model_args import UserError

    try:
        return args.func(args)
    except UserError as e:
        _fail(args, str(e))
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # e.g. --out into a missing folder
        _fail(args, str(e))


if __name__ == "__main__":
    sys.exit(main())
