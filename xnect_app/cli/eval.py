"""xnect-eval: accuracy of a model on ground truth.

Examples:
    xnect-eval coco ../shared/data/coco_dev                      # default weights, 512x320
    xnect-eval coco ../shared/data/coco_dev --weights models/xnect_selecsls60.pt --json
    xnect-eval coco DIR --checkpoint runs/xnect60/last.pt         # a training checkpoint
    xnect-eval coco ../shared/data/coco_dev --dynconv             # DynConv sparse path (mask unit)
    xnect-eval coco ../shared/data/coco_dev --flip                # flip test (image + mirror)
    xnect-eval coco ../shared/data/coco_dev --scales 1,0.75,0.5   # multi-scale test
    xnect-eval coco ../shared/data/coco_dev --weights new.pt --against models/xnect_selecsls60.pt
    xnect-eval coco ../shared/data/coco_dev --flip --against-plain  # what the flip test gains
    xnect-eval coco ../shared/data/coco_dev --peer movenet        # the MoveNet teacher beside us
    xnect-eval lspet ../shared/data/lspet --peer movenet          # PCK on LSPET's held-out slice

COCO: OKS AP over all 17 joints and over the 12 body joints, plus PCK@0.2 of the body joints,
bottom-up on the whole image. --bootstrap N adds the interval the body AP would move in over draws
of images like these (resampled with replacement); --against W compares with weights W on the same
draws (the difference, its interval, and how often the first scores higher), --against-plain with
the same weights without test-time augmentation: on 46 images a difference of 0.01 is often noise.
--teacher3d adds the root-relative 3D error against the BlazePose teacher's metric 3D of the same
people (no 3D ground truth needed):
    xnect-eval coco ../shared/data/coco_dev --teacher3d data_cache/eval_teacher_coco_dev.npz
MuPoTS-3D style 3D metrics (3DPCK@150mm, AUC, MPJPE) are in xnect_app.train.evaluate for users
with that dataset.

Exit status (docs/cli.md): 0 done, 1 an input or the weights could not be read, 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import replace
from pathlib import Path

from ..estimator import PoseEstimator, TrackConfig
from ..options import (EXIT_USAGE, OneLineParser, UserError, add_model_args, build_estimator,
                       decode_config, exit_code, fail, model_config, non_negative_int)
from ..runtime.config import ModelConfig
from ..teachers.movenet import MoveNetPeer, MoveNetTeacher
from ..train.data import LSPET_HELDOUT
from ..train.evaluate import bootstrap_ap, evaluate_coco, evaluate_pck, load_coco_json, lspet_as_coco

PROG = "xnect-eval"
UNTRACKED = TrackConfig(tracking=False, fit_skeleton=False)


def _estimator(a: argparse.Namespace, model: ModelConfig, what: str = "") -> PoseEstimator:
    """The estimator of `model` with the tool's decoding, for independent images; a one-line error
    (exit 1, 2 for a usage error) if it cannot be built."""
    try:
        return build_estimator(model, decode_config(a), UNTRACKED)
    except UserError as e:
        fail(PROG, f"{what}{_weights_hint(str(e), what)}", exit_code(e))


def _weights_hint(message: str, what: str) -> str:
    """The missing-weights message with the options xnect-eval has: it scores trained weights, so
    the hint names the options that choose them, not --random-weights."""
    message = re.sub(r";\s*pass (random_init=True / )?--random-weights for an untrained network", "", message)
    if "not found" in message and "weights file" in message:
        message += ("; give --against a weights file" if what.startswith("--against") else
                    "; choose the weights with --weights PATH or --checkpoint PATH")
    return message


def _augmentation(a: argparse.Namespace) -> str:
    flip = (["flip test" + (f" (mirror at {a.flip_scale:g})" if a.flip_scale else "")]
            if a.flip or a.flip_scale else [])
    parts = flip + ([f"scales {','.join(f'{s:g}' for s in a.scales)}"] if a.scales else [])
    return f" with {' and '.join(parts)}" if parts else ""


def _coco(a: argparse.Namespace) -> None:
    try:
        data, _ = load_coco_json(a.path)
    except (FileNotFoundError, json.JSONDecodeError, IsADirectoryError) as e:
        fail(PROG, f"cannot read COCO keypoints from {a.path!r}: {e}")
    try:
        model = model_config(a)
    except UserError as e:
        fail(PROG, str(e), exit_code(e))
    augmented = model.augmented
    plain = replace(model, flip_test=False, flip_scale=1.0, test_scales=(1.0,))
    compare = bool(a.against or a.against_plain)
    if a.against_plain and not augmented:
        fail(PROG, "--against-plain compares test-time augmentation with none: add --flip, --flip-scale "
                   "or --scales", EXIT_USAGE)
    resamples = a.bootstrap if a.bootstrap is not None else (1000 if compare else 0)
    if compare and not resamples:
        fail(PROG, "--against / --against-plain compare on resampled images: leave out --bootstrap 0", EXIT_USAGE)
    if a.teacher3d and not Path(a.teacher3d).is_file():
        fail(PROG, f"{a.teacher3d!r}: no teacher label file (python -m xnect_app.train.teacher "
                   "--for-eval --datasets NAME makes one)")
    est = _estimator(a, model)
    against = None
    if compare:
        option = "--against" if a.against else "--against-plain"
        base = plain if a.against_plain else model
        if a.against:  # another weights file, the same settings
            base = replace(base, weights=a.against, checkpoint=None, random_init=False, seed=None)
        against = _estimator(a, base, f"{option}: ")
    res = evaluate_coco(est, a.path, teacher3d=a.teacher3d, keep_results=bool(resamples))
    if resamples:
        base = None
        if against is not None:
            other = evaluate_coco(against, a.path, keep_results=True)
            base = other.pop("results")
            res["against"] = {"model": against.model_name, "ap_body": other["ap_body"],
                              "test_time_augmentation": augmented and not a.against_plain}
        res["bootstrap"] = bootstrap_ap(data, res.pop("results"), resamples, baseline=base)
    if a.peer:
        res["peer"] = _peer(a)
    res["model"] = est.model_name
    res["input_size"] = "x".join(map(str, a.input_size))
    res["dynconv"] = bool(model.dynconv)
    res["flip_test"] = est.flip_test
    res["flip_scale"] = est.flip_scale
    res["test_scales"] = list(est.test_scales)
    res["precision"] = est.precision
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"model {res['model']} at {res['input_size']} ({res['precision']}){_augmentation(a)} on {a.path} "
              f"({res['images']} images, {res['gt_persons']} persons, {res['detections']} detections)")
        print(f"  AP (17 joints)     {res['ap']:.3f}   AP50 {res['ap50']:.3f}   AR {res['ar']:.3f}")
        print(f"  AP (12 body)       {res['ap_body']:.3f}   AP50 {res['ap50_body']:.3f}   AR {res['ar_body']:.3f}   "
              f"medium {res['ap_medium_body']:.3f}   large {res['ap_large_body']:.3f}")
        b = res.get("bootstrap")
        if b:
            print(f"  body AP interval   {b['ap_low']:.3f} to {b['ap_high']:.3f} ({b['level']:.0%} of "
                  f"{b['resamples']} draws of the images with replacement)")
        if "against" in res:
            plain = " without test-time augmentation" if a.against_plain else ""
            print(f"  against {res['against']['model']}{plain}: body AP {res['against']['ap_body']:.3f}; difference "
                  f"{b['diff']:+.3f} ({b['level']:.0%} interval {b['diff_low']:+.3f} to {b['diff_high']:+.3f}), "
                  f"higher in {b['higher_share']:.0%} of the draws")
        print(f"  PCK@0.2 (12 body)  {res['pck_body@0.2']:.3f}")
        p = res.get("peer")
        if p:
            print(f"  peer {p['name']}: AP (17 joints) {p['ap']:.3f}   AP (12 body) {p['ap_body']:.3f}   "
                  f"PCK@0.2 {p['pck_body@0.2']:.3f}   ({p['detections']} detections)")
        if "computed_share" in res:
            print(f"  DynConv            {res['computed_share']:.3f} of the stride-8 cells computed (mean)")
        t = res.get("teacher3d")
        if t is not None:
            if t["persons"]:
                print(f"  3D vs teacher      MPJPE {t['mpjpe_mm']:.0f} mm (median {t['mpjpe_median_mm']:.0f}), "
                      f"PA-MPJPE {t['pa_mpjpe_mm']:.0f} mm (one mean pose: {t['mean_pose_mpjpe_mm']:.0f} / "
                      f"{t['mean_pose_pa_mpjpe_mm']:.0f} mm); "
                      f"{t['persons']} of {t['labelled_persons']} teacher-labelled people detected")
            else:
                print(f"  3D vs teacher      none of the {t['labelled_persons']} teacher-labelled people detected")


def _lspet(a: argparse.Namespace) -> None:
    try:
        gt = lspet_as_coco(a.path, split="heldout")
    except (FileNotFoundError, json.JSONDecodeError, ValueError) as e:
        fail(PROG, f"cannot read LSPET from {a.path!r}: {e}")
    try:
        model = model_config(a)
    except UserError as e:
        fail(PROG, str(e), exit_code(e))
    est = _estimator(a, model)
    res = {"model": est.model_name, **evaluate_pck(est, gt)}
    if a.peer:
        try:
            teacher = MoveNetTeacher(size=a.peer_size, refine=a.peer == "movenet")
        except (FileNotFoundError, ValueError) as e:
            fail(PROG, f"--peer {a.peer}: {e}")
        res["peer"] = {"name": f"{PEERS[a.peer]} at {a.peer_size}", **evaluate_pck(MoveNetPeer(teacher), gt)}
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"model {res['model']} on the {LSPET_HELDOUT} held-out LSPET images of {a.path} "
          f"(never trained on since the MoveNet labels)")
    print(f"  PCK@0.2 (12 body)  {res['pck_body@0.2']:.3f}   ({res['detections']} detections)")
    if a.peer:
        print(f"  peer {res['peer']['name']}: PCK@0.2 {res['peer']['pck_body@0.2']:.3f}")


PEERS = {"movenet": "MoveNet MultiPose + Thunder", "movenet-multipose": "MoveNet MultiPose"}


def _peer(a: argparse.Namespace) -> dict:
    """The teacher scored on the same images with the same metric."""
    try:
        teacher = MoveNetTeacher(size=a.peer_size, refine=a.peer == "movenet")
    except (FileNotFoundError, ValueError) as e:
        fail(PROG, f"--peer {a.peer}: {e}")
    r = evaluate_coco(MoveNetPeer(teacher), a.path)
    return {"name": f"{PEERS[a.peer]} at {a.peer_size}", "ap": r["ap"], "ap_body": r["ap_body"],
            "pck_body@0.2": r["pck_body@0.2"], "detections": r["detections"]}


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog=PROG, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("coco", help="COCO person-keypoints AP / PCK")
    c.add_argument("path", help="COCO folder (json + images) or the keypoints json")
    c.add_argument("--threshold", type=float, default=0.1, help="heatmap peak threshold")
    c.add_argument("--teacher3d", metavar="NPZ",
                   help="also the 3D agreement (MPJPE, PA-MPJPE in mm) with BlazePose labels of the same "
                        "people, e.g. data_cache/eval_teacher_coco_dev.npz")
    c.add_argument("--bootstrap", type=non_negative_int, default=None, metavar="N",
                   help="resample the images N times (with replacement) for the body AP's 90%% interval "
                        "(about 35 ms a draw)")
    c.add_argument("--against", metavar="WEIGHTS",
                   help="also evaluate WEIGHTS (same settings) and report the body AP difference on the "
                        "same draws (--bootstrap, default 1000)")
    c.add_argument("--against-plain", action="store_true",
                   help="compare with the same weights (or --against's) without --flip / --scales: what the "
                        "test-time augmentation gains, on the same draws")
    c.add_argument("--peer", choices=sorted(PEERS),
                   help="also score a peer on the same images: the MoveNet teacher (scripts/fetch_teachers.sh "
                        "fetches it), with or without its Thunder refinement")
    c.add_argument("--peer-size", type=int, default=384, metavar="PX",
                   help="the peer's input size, a multiple of 32 (default %(default)s)")
    c.add_argument("--json", action="store_true")
    add_model_args(c)
    c.set_defaults(fn=_coco)
    ls = sub.add_parser("lspet", help="PCK@0.2 of the body joints on LSPET's held-out slice")
    ls.add_argument("path", help="the LSPET folder (annotations.json + images)")
    ls.add_argument("--peer", choices=sorted(PEERS), help="also score the MoveNet teacher on the same images")
    ls.add_argument("--peer-size", type=int, default=384, metavar="PX")
    ls.add_argument("--json", action="store_true")
    add_model_args(ls)
    ls.set_defaults(fn=_lspet)
    return ap


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:  # the command line first (exit 2), then the files it names (exit 1)
        model_config(a)
        decode_config(a)
    except UserError as e:
        fail(PROG, str(e), exit_code(e))
    if not Path(a.path).exists():
        fail(PROG, f"{a.path!r} does not exist")
    try:
        a.fn(a)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
