"""xnect-train: train Stage I and Stage II, and export the default weights.

Examples:
    xnect-train stage1 --out runs/xnect60 --max-hours 2          # start or resume
    xnect-train stage1 --out runs/xnect60 --init models/xnect_selecsls60.pt  # continue the default
    xnect-train stage1 --out runs/dynmask --init models/xnect_selecsls60.pt --dynconv --dynconv-freeze \
        --epoch-steps 100 --dynconv-lr 3e-3 --lr-decay-at 18900 --max-hours 0.5   # fit a mask unit
    xnect-train stage1 --out runs/xnect60 --backbone-weights SelecSLS60_statedict.pth
    torchrun --nproc_per_node 4 -m xnect_app.cli.train stage1 --out runs/xnect60 --device cuda
    xnect-train label lspet coco_train_extra extra_people backgrounds   # MoveNet teacher labels
    xnect-train label ~/gym_footage                                     # your own footage: label it,
    xnect-train stage1 --out runs/gym --init models/xnect_selecsls60.pt --own-data ~/gym_footage \
        --max-hours 1                                                   # then fine-tune on it
    xnect-train stage2 --out runs/stage2 --steps 3000
    xnect-train export --stage1 runs/xnect60/last.pt --stage2 runs/stage2/last.pt \
        [--mask-unit runs/dynmask/last.pt] --out models/xnect_selecsls60.pt
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from ..options import DATA_ROOT, EXIT_USAGE, OneLineParser, fail, input_size
from ..train.losses import LossWeights
from ..train.movenet_labels import LABEL_DESCRIPTION, LABEL_EXAMPLES, add_label_arguments, run_label
from ..train.release import export_weights
from ..train.stage2 import Stage2TrainConfig, train_stage2
from ..train.trainer import TrainConfig, Trainer


def _stage1(a: argparse.Namespace) -> None:
    cfg = TrainConfig(out_dir=a.out, backbone=a.backbone, size=tuple(a.size), batch_size=a.batch_size,
                      lr=a.lr, epoch_steps=a.epoch_steps, max_steps=a.max_steps, max_hours=a.max_hours,
                      data_root=a.data_root, dev_set=a.dev_set or None, teacher_cache=a.teacher_cache,
                      workers=a.workers, threads=a.threads, backbone_weights=a.backbone_weights,
                      device=a.device, warmup_steps=a.warmup_steps, init_weights=a.init,
                      lr_decay_at=tuple(int(s) for s in a.lr_decay_at.split(",") if s),
                      lr_decay_after_hours=a.lr_decay_after_hours,
                      dynconv=a.dynconv, dynconv_budget=a.dynconv_budget, dynconv_weight=a.dynconv_weight,
                      dynconv_epochs=a.dynconv_epochs, dynconv_freeze=a.dynconv_freeze,
                      dynconv_lr=a.dynconv_lr if a.dynconv_lr is not None else (3e-3 if a.dynconv_freeze else 1e-2),
                      channels_last=not a.no_channels_last, ema_decay=a.ema, swa_every=a.swa_every,
                      coco_repeat=a.coco_repeat, composite_prob=a.composite_prob, negative_prob=a.negative_prob, amp=a.amp,
                      own_data=tuple(a.own_data), own_repeat=a.own_repeat,
                      loss=dataclasses.asdict(LossWeights(heatmap=a.heatmap_weight,
                                                          heatmap_positive_boost=a.heatmap_boost,
                                                          paf_positive_boost=a.paf_boost)))
    if a.own_repeat < 1:
        fail("xnect-train", f"--own-repeat {a.own_repeat}: give 1 or more", code=EXIT_USAGE)
    if a.coco_repeat < 1:
        fail("xnect-train", f"--coco-repeat {a.coco_repeat}: give 1 or more", code=EXIT_USAGE)
    if not 0.0 <= a.composite_prob <= 1.0:
        fail("xnect-train", f"--composite-prob {a.composite_prob}: give a probability in [0, 1]", code=EXIT_USAGE)
    if not 0.0 <= a.negative_prob <= 1.0 or a.composite_prob + a.negative_prob > 1.0:
        fail("xnect-train", f"--negative-prob {a.negative_prob}: give a probability in [0, 1] that, with "
                            f"--composite-prob {a.composite_prob}, sums to 1 at most", code=EXIT_USAGE)
    if not 0.0 <= a.ema < 1.0:
        fail("xnect-train", f"--ema {a.ema}: give a decay in [0, 1) (0 = off)", code=EXIT_USAGE)
    if a.swa_every < 0:
        fail("xnect-train", f"--swa-every {a.swa_every}: give a number of steps (0 = off)", code=EXIT_USAGE)
    if not 0.0 < a.dynconv_budget <= 1.0:
        fail("xnect-train", f"--dynconv-budget {a.dynconv_budget}: give a share of the cost in (0, 1]", code=EXIT_USAGE)
    # the values are right: now the files they name
    if not Path(cfg.data_root).is_dir():
        fail("xnect-train", f"data root {cfg.data_root!r} is not a folder (point --data-root at the data)")
    if a.init and not Path(a.init).is_file():
        fail("xnect-train", f"--init {a.init!r} does not exist")
    for d in a.own_data:
        if not Path(d).exists():
            fail("xnect-train", f"--own-data {d!r} does not exist")
    if a.backbone_weights and not Path(a.backbone_weights).is_file():
        fail("xnect-train", f"--backbone-weights {a.backbone_weights!r} does not exist")
    Trainer(cfg).run()


def _stage2(a: argparse.Namespace) -> None:
    train_stage2(Stage2TrainConfig(out_dir=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                   teacher_cache=a.teacher_cache, data_root=a.data_root,
                                   enc_noise_max_m=a.enc_noise_max, enc_drop=a.enc_drop,
                                   use_encodings=not a.no_encodings, pair_frac=a.pair_frac))


def _export(a: argparse.Namespace) -> None:
    if a.bn_crops < 0:
        fail("xnect-train", "--bn-crops must be 0 or more", code=EXIT_USAGE)
    for p in (*a.stage1, *(a.stage2 or ()), a.mask_unit):
        if p and not Path(p).is_file():
            fail("xnect-train", f"checkpoint {p!r} does not exist")
    try:
        export_weights(a.stage1, a.stage2, a.out, half=not a.fp32, mask_unit_ckpt=a.mask_unit,
                       averaged=not a.raw, bn_crops=a.bn_crops, data_root=a.data_root)
    except (ValueError, FileNotFoundError) as e:
        fail("xnect-train", str(e))
    print(f"wrote {a.out}")


def _label(a: argparse.Namespace) -> None:
    code = run_label(a, "xnect-train " + " ".join(sys.argv[1:]))
    if code:
        sys.exit(code)


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="xnect-train", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s1 = sub.add_parser("stage1", help="train (or resume) the Stage I network")
    s1.add_argument("--out", default="runs/xnect60", help="run folder; resumes from OUT/last.pt")
    s1.add_argument("--backbone", default="selecsls60", help="selecsls60 (default), selecsls42b, selecsls84 ...")
    s1.add_argument("--size", type=input_size, default="256x256", help="training crop WxH (default 256x256)")
    s1.add_argument("--batch-size", type=int, default=8)
    s1.add_argument("--lr", type=float, default=5e-4)
    s1.add_argument("--warmup-steps", type=int, default=200)
    s1.add_argument("--lr-decay-at", default="", help="comma-separated steps with a 10x drop")
    s1.add_argument("--lr-decay-after-hours", type=float, metavar="H",
                    help="a 10x drop once this run has trained H hours (for time-boxed runs)")
    s1.add_argument("--epoch-steps", type=int, default=400, help="steps between dev evaluations")
    s1.add_argument("--max-steps", type=int)
    s1.add_argument("--max-hours", type=float)
    s1.add_argument("--data-root", default=DATA_ROOT)
    s1.add_argument("--dev-set", default=f"{DATA_ROOT}/coco_dev", help="COCO folder for per-epoch AP ('' = off)")
    s1.add_argument("--teacher-cache", default="data_cache")
    s1.add_argument("--workers", type=int, default=1)
    s1.add_argument("--threads", type=int)
    s1.add_argument("--device", default="cpu")
    s1.add_argument("--amp", action="store_true",
                    help="bfloat16 autocast for the network, losses in float32: about 2x faster steps on GPUs and "
                         "on CPUs with bfloat16 instructions (avx512_bf16, AMX); slower on other CPUs")
    s1.add_argument("--no-channels-last", action="store_true",
                    help="keep NCHW activations (default NHWC: about 1.5x faster steps on CPU)")
    s1.add_argument("--backbone-weights", help="official/timm SelecSLS ImageNet state dict for the core")
    s1.add_argument("--coco-repeat", type=int, default=10,
                    help="how many times each COCO training image counts among the real images (LSPET's "
                         "10,000 count once; default %(default)s)")
    s1.add_argument("--composite-prob", type=float, default=0.5,
                    help="share of training items made as multi-person composites (default %(default)s)")
    s1.add_argument("--negative-prob", type=float, default=0.03,
                    help="share of training items that are a person-free background, against false "
                         "detections on objects (default %(default)s)")
    s1.add_argument("--heatmap-weight", type=float, default=LossWeights.heatmap,
                    help="weight of the heatmap loss against the PAF loss (default %(default)s; the PAF "
                         "term is about 4x the heatmap term at weight 1)")
    s1.add_argument("--heatmap-boost", type=float, default=LossWeights.heatmap_positive_boost,
                    help="extra loss weight on heatmap cells near joints (default %(default)s)")
    s1.add_argument("--paf-boost", type=float, default=LossWeights.paf_positive_boost,
                    help="extra loss weight on PAF cells on limbs (default %(default)s)")
    s1.add_argument("--dynconv", action="store_true",
                    help="train a DynConv mask unit with the pose losses + sparsity loss (fine-tune a dense "
                         "network with --init, or continue a dense run folder)")
    s1.add_argument("--dynconv-budget", type=float, default=0.25,
                    help="target share of the masked MACs (default %(default)s)")
    s1.add_argument("--dynconv-weight", type=float, default=1000.0, help="sparsity loss weight (default %(default)s)")
    s1.add_argument("--dynconv-epochs", type=int, default=10,
                    help="length of the sparsity schedule in epochs of --epoch-steps (default %(default)s)")
    s1.add_argument("--dynconv-lr", type=float, default=None,
                    help="learning rate of the mask unit (default 1e-2, 3e-3 with --dynconv-freeze; it follows "
                         "the warm-up and decays)")
    s1.add_argument("--dynconv-freeze", action="store_true",
                    help="train the mask unit alone: the network (weights and BN statistics) stays as loaded, "
                         "so dense inference is unchanged")
    s1.add_argument("--ema", type=float, default=0.999, metavar="DECAY",
                    help="keep a moving average of the weights, evaluated and exported (default "
                         "%(default)s, about the last 1,000 steps; 0 = off)")
    s1.add_argument("--swa-every", type=int, default=0, metavar="K",
                    help="average the weights every K steps with equal weights (stochastic weight "
                         "averaging) instead of --ema's moving average (BatchNorm statistics are averaged "
                         "too; for the bundled weights that scored higher than export --bn-crops 400)")
    s1.add_argument("--init", help="continue from an exported weights file (e.g. the bundled "
                                   "models/xnect_selecsls60.pt) when OUT has no checkpoint yet")
    s1.add_argument("--own-data", nargs="+", default=[], metavar="DIR",
                    help="folders of your own images or videos, labelled first by `xnect-train label DIR`: "
                         "fine-tune on them mixed with the base data (give --init the bundled weights)")
    s1.add_argument("--own-repeat", type=int, default=10,
                    help="how many times each of your images counts among the real images (default %(default)s)")
    s1.set_defaults(fn=_stage1)
    lb = sub.add_parser("label", help="label every person in images or videos with the MoveNet teacher",
                        description=LABEL_DESCRIPTION, epilog=LABEL_EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_label_arguments(lb)
    lb.set_defaults(fn=_label)
    s2 = sub.add_parser("stage2", help="train the Stage II lifting network")
    s2.add_argument("--out", default="runs/stage2")
    s2.add_argument("--steps", type=int, default=3000)
    s2.add_argument("--batch-size", type=int, default=256)
    s2.add_argument("--lr", type=float, default=1e-3)
    s2.add_argument("--teacher-cache", default="data_cache")
    s2.add_argument("--data-root", default=DATA_ROOT)
    s2.add_argument("--enc-noise-max", type=float, default=0.3, metavar="M",
                    help="largest per-example noise on the simulated 3D encodings, metres (default 0.3)")
    s2.add_argument("--enc-drop", type=float, default=0.25,
                    help="share of examples without encodings, lifted from 2D alone (default 0.25)")
    s2.add_argument("--pair-frac", type=float, default=0.0, metavar="F",
                    help="share of examples that are annotated training people with the teacher's 3D, "
                         "rather than 3D poses projected in synthetic cameras (default %(default)s)")
    s2.add_argument("--no-encodings", action="store_true",
                    help="lift from the 2D joints alone, ignoring Stage I's 3D encodings (for Stage I "
                         "weights whose 3D branch does not help yet; `xnect-eval coco --teacher3d` tells)")
    s2.set_defaults(fn=_stage2)
    ex = sub.add_parser("export", help="write a weights file for PoseEstimator")
    ex.add_argument("--stage1", required=True, nargs="+", metavar="CKPT",
                    help="a `stage1` run's checkpoint or a weights file; several checkpoints of one network: "
                         "the plain mean of their weights (e.g. a run's checkpoints a few thousand steps apart)")
    ex.add_argument("--stage2", nargs="+", metavar="CKPT",
                    help="a `stage2` run's checkpoint, or a weights file whose Stage II to keep "
                         "(e.g. models/xnect_selecsls60.pt); several: an ensemble that averages their poses")
    ex.add_argument("--mask-unit", metavar="CKPT",
                    help="add the DynConv mask unit of a `stage1 --dynconv --dynconv-freeze` run fitted to "
                         "this Stage I (e.g. runs/dynmask/last.pt)")
    ex.add_argument("--out", default="models/xnect_selecsls60.pt")
    ex.add_argument("--fp32", action="store_true", help="keep float32 (default: float16 storage)")
    ex.add_argument("--raw", action="store_true",
                    help="export Stage I's raw weights, not their moving average (--ema)")
    ex.add_argument("--bn-crops", type=int, default=0, metavar="N",
                    help="re-estimate Stage I's BatchNorm statistics on N training crops first (e.g. 400, "
                         "about 1.5 min on 2 CPU cores; for a moving average from a GPU run)")
    ex.add_argument("--data-root", default=DATA_ROOT, help="training data for --bn-crops")
    ex.set_defaults(fn=_export)
    return ap


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        a.fn(a)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
