"""xnect-bench: speed and memory benchmarks, one subcommand each.

examples:
  xnect-bench pose                             # post-processing time for 1, 5, 10, 15 people
  xnect-bench pipeline --help                  # end-to-end fps on a video, threaded vs sequential
  xnect-bench tta --frames 20                  # cost of --flip and --scales against one pass
  xnect-bench tracking demo_videos/vtest.avi --gt tests/data/vtest_ids.json  # identities
  xnect-bench backbone --quick                 # batch 1 only, a few minutes on 2 CPU cores
  xnect-bench backbone --json > backbone.json  # everything, as one JSON document
  xnect-bench backbone --models 60 --sizes 512x320 --batches 1 --runs 5 --threads 2
  xnect-bench fastpath --variants channels-last --frames 2 --rounds 1 --no-ap --input-size 256x160

--json prints one JSON document on stdout instead of the tables (every subcommand); --out PATH also
writes it to a file. Exit status (docs/cli.md): 0 done, 1 an input, the weights or the run failed,
2 usage error.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..bench import backbone as bench_backbone
from ..bench import dynconv as bench_dynconv
from ..bench import fastpath as bench_fastpath
from ..bench import peers as bench_peers
from ..bench import pipeline as bench_pipeline
from ..bench import tracking as bench_tracking
from ..bench import tta as bench_tta
from ..bench.pose import add_pose_options, run_pose_from_args
from ..options import EXIT_USAGE, OneLineParser, UserError, exit_code, positive_int


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(positive_int(t) for t in text.split(",") if t.strip())


def add_backbone(subparsers) -> None:
    p = subparsers.add_parser("backbone", help="SelecSLS cores vs a ResNet-50 trunk: CPU speed, BN fusion, pruning, memory",
                              description=bench_backbone.DESCRIPTION, epilog=bench_backbone.EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_backbone.build_parser(p)
    p.set_defaults(func=bench_backbone.run)


# --------------------------------------------------------------------------- pose, pipeline

def add_pose(subparsers) -> None:
    p = subparsers.add_parser(
        "pose", help="decode + Stage II + root + tracking + skeleton fit time for 1..15 synthetic people",
        description="Times the post-processing (peaks, PAF grouping, 3D read-out, Stage II,\n"
                    "root translation, tracking with One Euro filters, skeleton fit) on 64x40\n"
                    "maps rendered from synthetic scenes; with --video, also what the people\n"
                    "add to a whole frame.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--people", type=_int_list, default="1,5,10,15", metavar="N[,N]")
    p.add_argument("--runs", type=positive_int, default=30, metavar="N")
    p.add_argument("--json", action="store_true")
    add_pose_options(p)
    p.set_defaults(func=run_pose)


def run_pose(args: argparse.Namespace) -> int:
    if any(n > 50 for n in args.people):
        _fail(args, "--people counts must be between 1 and 50", EXIT_USAGE)
    return run_pose_from_args(args)


def add_pipeline(subparsers) -> None:
    p = subparsers.add_parser("pipeline", help="threaded pipeline vs a sequential loop on a video",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_pipeline.build_parser(p)
    p.set_defaults(func=bench_pipeline.run)


def add_dynconv(subparsers) -> None:
    p = subparsers.add_parser("dynconv", help="DynConv sparse vs dense Stage I on a video, side by side",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_dynconv.build_parser(p)
    p.set_defaults(func=bench_dynconv.run)


def add_tta(subparsers) -> None:
    p = subparsers.add_parser("tta", help="single pass vs --flip / --scales on a video, side by side",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_tta.build_parser(p)
    p.set_defaults(func=bench_tta.run)


def add_fastpath(subparsers) -> None:
    p = subparsers.add_parser("fastpath", help="fp32 vs fused/pruned/channels-last/compiled/ONNX Runtime/int8",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_fastpath.build_parser(p)
    p.set_defaults(func=bench_fastpath.run)


def add_peers(subparsers) -> None:
    p = subparsers.add_parser("peers", help="ours against MoveNet MultiPose / YOLO11n-pose on the same frames",
                              formatter_class=argparse.RawDescriptionHelpFormatter, description=bench_peers.__doc__)
    bench_peers.build_parser(p)
    p.set_defaults(func=bench_peers.run)


def add_tracking(subparsers) -> None:
    p = subparsers.add_parser("tracking", help="identities on a video: track counts and lengths, IDF1 against labels",
                              formatter_class=argparse.RawDescriptionHelpFormatter, description=bench_tracking.__doc__)
    bench_tracking.build_parser(p)
    p.set_defaults(func=bench_tracking.run)


# --------------------------------------------------------------------------- entry point

def _fail(args: argparse.Namespace, message: str, code: int = 1):
    print(f"{args.prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(code)


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
    add_tracking(sub)
    add_peers(sub)
    for name, sp in sub.choices.items():
        sp.set_defaults(prog=f"xnect-bench {name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if not args.quiet:
        logging.getLogger("xnect_app.bench").setLevel(logging.INFO)
    try:
        return args.func(args)
    except UserError as e:  # UsageError: exit 2, else 1
        _fail(args, str(e), exit_code(e))
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as e:  # e.g. --out into a missing folder
        _fail(args, str(e))


if __name__ == "__main__":
    sys.exit(main())
