"""Stage I trainer: resumable, time-boxed, with loss curves and dev-set evaluation.

Single machine: `xnect-train stage1 --out runs/xnect60`. Several machines or processes:
`torchrun --nproc_per_node N -m xnect_app.cli.train stage1 ...` (DistributedDataParallel, gloo
on CPU, nccl on GPU); every rank draws its own random samples, rank 0 writes checkpoints.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import skeleton
from ..nn import dynconv
from ..nn.stage1 import Stage1Config, Stage1Net
from .losses import LossWeights, stage1_loss

_logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    out_dir: str = "runs/xnect60"
    backbone: str = "selecsls60"
    size: tuple[int, int] = (256, 256)  # width, height of training crops
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    lr_decay_at: tuple[int, ...] = ()   # steps where the learning rate drops 10x
    lr_decay_after_hours: float | None = None  # or a 10x drop once this run has trained so long
    epoch_steps: int = 400
    max_steps: int | None = None
    max_hours: float | None = None
    data_root: str = "../shared/data"
    dev_set: str | None = "../shared/data/coco_dev"
    teacher_cache: str = "data_cache"
    composite_prob: float = 0.5
    negative_prob: float = 0.03  # share of items that are a person-free background
    coco_repeat: int = 10  # COCO images appear this many times among the real images (LSPET once)
    workers: int = 1
    threads: int | None = None
    seed: int = 0
    save_every_min: float = 10.0
    backbone_weights: str | None = None
    init_weights: str | None = None  # continue from an exported weights file (models/*.pt)
    own_data: tuple[str, ...] = ()  # folders of the user's footage, labelled by `xnect-train label`
    own_repeat: int = 10  # each of their images this many times among the real images
    device: str = "cpu"
    # NHWC activations: 1.5x faster training steps on CPU (oneDNN's convolutions prefer them).
    channels_last: bool = True
    # bfloat16 autocast for the network (losses stay float32): about 2x faster steps on GPUs and on
    # CPUs with bfloat16 instructions (avx512_bf16, AMX; 512x320 batch 8: 2.0 vs 4.0 s a step on
    # session 17's AMD EPYC); slower where bfloat16 is emulated.
    amp: bool = False
    # DynConv (nn/dynconv.py): train a mask unit with the pose losses plus the sparsity loss.
    dynconv: bool = False
    dynconv_budget: float = 0.25   # target share of the masked MACs
    # Our pose losses are sums (hundreds), not the per-element means the DynConv paper's 0.01
    # goes with; 1000 puts the budget push on a background cell at ~0.1 of a joint cell's pull.
    dynconv_weight: float = 1000.0
    dynconv_epochs: int = 10       # schedule length: per-layer bounds open by 33%, noise off at 80%
    # The mask unit's own learning rate: it starts saturated (bias 3, all cells on), and at the
    # network's 5e-4 (let alone 5e-5) Adam would need thousands of steps to move it at all.
    dynconv_lr: float = 1e-2
    # Train the mask unit alone, supervised: it learns the cells of people's boxes (from the 2D
    # labels, see `person_cells`) with the network frozen as loaded, so the dense path is
    # unchanged. (Trained through the frozen network with the sparsity loss instead, it learned
    # the opposite: with zero fill an untrained-for network outputs garbage around people, so the
    # mask went off on people and on on background; box masks keep its coco_dev AP.)
    dynconv_freeze: bool = False
    person_pos_weight: float = 3.0  # BCE weight of person cells: missing a person costs more than background
    # Moving average of the weights (parameters and BN statistics), evaluated each epoch and
    # exported: it smooths the noise of batch-8 steps. The first 1/(1-decay) steps are a plain
    # running mean. 0 turns it off; runs with --dynconv-freeze have none (the network is fixed).
    ema_decay: float = 0.999
    # Stochastic weight averaging: with K > 0 the averaged weights are the plain mean of the weights
    # every K steps (all of this run's snapshots alike), in place of the moving average. The same
    # slot as --ema: evaluated each epoch, checkpointed, exported. Session 18: the mean of four
    # checkpoints 1,000-3,000 steps apart scored body AP 0.180 on coco_dev against 0.160-0.171 for each.
    swa_every: int = 0
    loss: dict[str, float] = field(default_factory=lambda: dataclasses.asdict(LossWeights()))


def image_tensor(img: np.ndarray) -> torch.Tensor:
    """A BGR H x W x 3 training image as the 3 x H x W float tensor (0..255) Stage I takes."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


def collate_targets(samples: list[Any], stride: int = 8) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images (BGR float 0..255) and rendered, masked targets for a list of training samples."""
    from ..pose.targets import render_targets

    imgs, maps = [], {k: [] for k in ("heatmaps", "pafs", "enc3d", "enc3d_weight", "hm_mask", "paf_mask",
                                      "person_cells", "person_weight")}
    for s in samples:
        img = _get(s, "image")
        h, w = img.shape[:2]
        kp3d = _get(s, "kp3d_mm")
        kp2d, uncertain = split_uncertain(_get(s, "kp2d"), _get(s, "weight_2d", None))
        t = render_targets(kp2d, kp3d, in_size=(w, h), stride=stride)
        hm_mask, paf_mask = target_masks(_get(s, "labelled_2d"), _get(s, "ignore_mask"), t["heatmaps"].shape[1:], stride)
        if uncertain.any():
            mask_uncertain(hm_mask, paf_mask, _get(s, "kp2d"), uncertain, stride)
        imgs.append(image_tensor(img))
        for k in ("heatmaps", "pafs", "enc3d", "enc3d_weight"):
            maps[k].append(torch.from_numpy(t[k]))
        maps["hm_mask"].append(torch.from_numpy(hm_mask))
        maps["paf_mask"].append(torch.from_numpy(paf_mask))
        cells, weight = person_cells(_get(s, "kp2d"), _get(s, "ignore_mask"), t["heatmaps"].shape[1:], stride)
        maps["person_cells"].append(torch.from_numpy(cells))
        maps["person_weight"].append(torch.from_numpy(weight))
    return torch.stack(imgs), {k: torch.stack(v) for k, v in maps.items()}


def split_uncertain(kp2d: np.ndarray, weight_2d: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Joints with a label weight under 0.5 (a teacher's uncertain guesses) are not taught: the
    labels without them, and their (P, 19) mask."""
    kp2d = np.asarray(kp2d)
    if weight_2d is None or not len(kp2d):
        return kp2d, np.zeros(kp2d.shape[:2], bool)
    uncertain = (kp2d[..., 2] > 0) & (np.asarray(weight_2d) < 0.5)
    if not uncertain.any():
        return kp2d, uncertain
    sure = kp2d.copy()
    sure[uncertain] = 0.0
    return sure, uncertain


def mask_uncertain(hm_mask: np.ndarray, paf_mask: np.ndarray, kp2d: np.ndarray, uncertain: np.ndarray,
                   stride: int) -> None:
    """Switch the loss off, in place, around uncertain joints (their heatmap channel, within a
    tenth of the person's size and at least 1.5 cells) and along limbs that end in one."""
    from ..pose.targets import to_map

    h, w = hm_mask.shape[1:]
    gx = np.arange(w, dtype=np.float32)[None, :]
    gy = np.arange(h, dtype=np.float32)[:, None]
    for p in np.flatnonzero(uncertain.any(1)):
        kp = kp2d[p]
        seen = kp[:, 2] > 0
        xy = to_map(kp[:, :2], stride).astype(np.float32)
        ext = xy[seen].max(0) - xy[seen].min(0) if seen.sum() > 1 else np.zeros(2)
        r = max(1.5, 0.1 * float(ext.max()))
        for j in np.flatnonzero(uncertain[p]):
            near = (gx - xy[j, 0]) ** 2 + (gy - xy[j, 1]) ** 2 <= r * r
            hm_mask[j][near] = 0.0
        for li, (a, b) in enumerate(skeleton.LIMBS_2D):
            if not (seen[a] and seen[b] and (uncertain[p, a] or uncertain[p, b])):
                continue
            d = xy[b] - xy[a]
            t = np.clip(((gx - xy[a, 0]) * d[0] + (gy - xy[a, 1]) * d[1]) / max(float(d @ d), 1e-6), 0.0, 1.0)
            near = (gx - xy[a, 0] - t * d[0]) ** 2 + (gy - xy[a, 1] - t * d[1]) ** 2 <= r * r
            paf_mask[2 * li][near] = 0.0
            paf_mask[2 * li + 1][near] = 0.0


def person_cells(kp2d: np.ndarray, ignore_mask: np.ndarray | None, hw: tuple[int, int], stride: int,
                 grow: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Target of a supervised DynConv mask unit: 1 on the stride cells touched by a person's box
    (the box of the labelled joints, grown by `grow` of its larger side each way, at least one
    cell), and a weight that is 0 where unlabelled people are (ignore_mask)."""
    h, w = hw
    cells = np.zeros((h, w), np.float32)
    for kp in kp2d:
        seen = kp[kp[:, 2] > 0, :2]
        if len(seen) < 2:
            continue
        (x0, y0), (x1, y1) = seen.min(0), seen.max(0)
        g = max(grow * max(x1 - x0, y1 - y0), stride)
        c0, r0 = int(max((x0 - g) // stride, 0)), int(max((y0 - g) // stride, 0))
        c1, r1 = int(min((x1 + g) // stride, w - 1)), int(min((y1 + g) // stride, h - 1))
        if c1 >= c0 and r1 >= r0:
            cells[r0:r1 + 1, c0:c1 + 1] = 1.0
    weight = np.ones((h, w), np.float32)
    if ignore_mask is not None and ignore_mask.any():
        m = ignore_mask[: h * stride, : w * stride]
        m = np.pad(m, ((0, h * stride - m.shape[0]), (0, w * stride - m.shape[1])))
        weight[m.reshape(h, stride, w, stride).max((1, 3)) > 0] = 0.0
    return cells, weight


def target_masks(labelled_2d: np.ndarray, ignore_mask: np.ndarray | None, hw: tuple[int, int],
                 stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel loss masks: channels of joint types the source does not label are off, and
    cells covering unlabelled people are off."""
    h, w = hw
    labelled = np.asarray(labelled_2d, bool)
    spatial = np.ones((h, w), np.float32)
    if ignore_mask is not None and ignore_mask.any():
        ih, iw = ignore_mask.shape
        cells = ignore_mask[: h * stride, : w * stride]
        cells = np.pad(cells, ((0, h * stride - cells.shape[0]), (0, w * stride - cells.shape[1])))
        spatial = 1.0 - cells.reshape(h, stride, w, stride).max(axis=(1, 3)).astype(np.float32)
    hm_mask = labelled[:, None, None].astype(np.float32) * spatial[None]
    limb_ok = np.array([labelled[a] and labelled[b] for a, b in skeleton.LIMBS_2D], np.float32)
    paf_mask = np.repeat(limb_ok, 2)[:, None, None] * spatial[None]
    return hm_mask, paf_mask


def _match_state_layout(opt: torch.optim.Optimizer) -> None:
    """Optimizer moments loaded from a checkpoint take their parameter's memory layout."""
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape and p.dim() == 4:
                    opt.state[p][k] = v.contiguous(memory_format=torch.channels_last)


_REQUIRED = object()


def _get(s: Any, key: str, default: Any = _REQUIRED) -> Any:
    if default is _REQUIRED:
        return s[key] if isinstance(s, dict) else getattr(s, key)
    return s.get(key, default) if isinstance(s, dict) else getattr(s, key, default)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed + self.rank)
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one input size throughout: pick the fastest kernels once
        self.net = Stage1Net(Stage1Config(backbone=cfg.backbone, dynconv=cfg.dynconv,
                                          dynconv_budget=cfg.dynconv_budget)).to(self.device)
        if cfg.channels_last:
            self.net.to(memory_format=torch.channels_last)
        mask_params = list(self.net.mask_unit.parameters()) if cfg.dynconv else []
        mask_ids = {id(p) for p in mask_params}
        net_params = [p for p in self.net.parameters() if id(p) not in mask_ids]
        if cfg.dynconv and cfg.dynconv_freeze:
            for p in net_params:
                p.requires_grad_(False)
            net_params = []
        groups = [{"params": net_params, "name": "net"}] if net_params else []
        if mask_params:
            groups.append({"params": mask_params, "name": "mask_unit", "weight_decay": 0.0})
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        self.timed_decay_at: list[int] = []  # the step lr_decay_after_hours was reached at
        self.warmup_from = 0
        self.dynconv_start = 0  # step at which mask training began (its schedule counts from there)
        self.history: list[dict[str, Any]] = []
        self._stop = False
        self._ema_state: dict[str, torch.Tensor] | None = None
        self.ema_updates = 0
        resumed = self._resume()
        if cfg.channels_last:
            _match_state_layout(self.opt)
        if not resumed and cfg.backbone_weights:
            from ..nn.stage1 import load_backbone_imagenet
            load_backbone_imagenet(self.net, cfg.backbone_weights)
            _logger.info("core initialised from %s", cfg.backbone_weights)
        self.ema_net: Stage1Net | None = None
        if (cfg.ema_decay > 0 or cfg.swa_every > 0) and not cfg.dynconv_freeze:
            self.ema_net = copy.deepcopy(self.net).eval()
            self.ema_net.requires_grad_(False)
            if self._ema_state is not None:  # else it starts from the current weights
                self.ema_net.load_state_dict(self._ema_state)
        self._ema_state = None
        if cfg.dev_set and self.rank == 0:
            # imported now, not at the first evaluation: editing the package while a run goes on
            # must not leave the run with a half-edited estimator
            from .evaluate import evaluate_coco  # noqa: F401
            from ..estimator import PoseEstimator  # noqa: F401
        self.model: nn.Module = self.net
        # --dynconv-freeze trains the mask unit alone, on the frozen network's features, outside the
        # network's forward (see _mask_unit_loss): DDP wraps that unit then, else its gradients would
        # never be all-reduced and every rank would train its own mask unit.
        self.mask_model: nn.Module | None = self.net.mask_unit if cfg.dynconv and cfg.dynconv_freeze else None
        if self.world > 1 and self.mask_model is not None:
            self.mask_model = nn.parallel.DistributedDataParallel(self.mask_model)
        elif self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(self.net)

    # -- checkpoints -------------------------------------------------------------------------
    def _resume(self) -> bool:
        path = self.out / "last.pt"
        if not path.exists():
            return self._init_from_weights()
        ck = torch.load(path, map_location="cpu", weights_only=False)
        self.step = int(ck["step"])
        self.history = list(ck.get("history", []))
        if self._load_stage1(ck["model"]):
            self.opt.load_state_dict(ck["optimizer"])
            self.warmup_from = int(ck.get("warmup_from", 0))
            self.dynconv_start = int(ck.get("dynconv_start", 0))
            if ck.get("ema") is not None and ck.get("average", "ema") == self._average_kind:
                self._ema_state = {k: v.float() if v.is_floating_point() else v for k, v in ck["ema"].items()}
                self.ema_updates = int(ck.get("ema_updates", 0))
        else:  # a dense run continued with --dynconv: new parameters, fresh optimizer
            self.warmup_from = self.dynconv_start = self.step
        _logger.info("resumed %s at step %d", path, self.step)
        return True

    @property
    def _average_kind(self) -> str:
        """What the averaged weights are: a moving average, or (--swa-every) a plain mean; a resumed
        run that switches starts its average afresh."""
        return "swa" if self.cfg.swa_every > 0 else "ema"

    def _load_stage1(self, state: dict[str, torch.Tensor]) -> bool:
        """Load Stage I weights; a dense state dict into a DynConv net leaves the new mask unit at
        its initialisation (every cell active). Returns False in that case."""
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        new_mask_unit = bool(missing) and all(k.startswith("mask_unit.") for k in missing)
        if unexpected or (missing and not new_mask_unit):
            raise RuntimeError(f"checkpoint does not fit the network: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]} (DynConv on/off or backbone differ?)")
        if new_mask_unit:
            _logger.info("DynConv mask unit starts fresh (the checkpoint is a dense network)")
        return not new_mask_unit

    def _init_from_weights(self) -> bool:
        """Start from an exported weights file, keeping its step count and loss history; the
        optimizer state starts afresh (the warm-up covers that)."""
        if not self.cfg.init_weights:
            return False
        doc = torch.load(self.cfg.init_weights, map_location="cpu", weights_only=True)
        meta = doc.get("meta", {})
        self.step = int(meta.get("stage1_step", 0))
        self.history = list(meta.get("history", []))
        self.warmup_from = self.dynconv_start = self.step
        state = doc["stage1"]
        if not self.cfg.dynconv and any(k.startswith("mask_unit.") for k in state):
            state = {k: v for k, v in state.items() if not k.startswith("mask_unit.")}
            _logger.info("the weights' DynConv mask unit is left out of this dense run; fit a new one to the "
                         "result with --dynconv --dynconv-freeze")
        if self._load_stage1(state):
            self.dynconv_start = int(meta.get("dynconv_start", self.step))
        _logger.info("initialised from %s at step %d", self.cfg.init_weights, self.step)
        return True

    def save(self) -> None:
        if self.rank != 0:
            return
        ck = {"model": self.net.state_dict(), "optimizer": self.opt.state_dict(), "step": self.step,
              "warmup_from": self.warmup_from, "dynconv_start": self.dynconv_start, "history": self.history, "config": dataclasses.asdict(self.cfg),
              "stage1_config": self.net.cfg.to_dict()}
        if self.ema_net is not None:
            ck["ema"], ck["ema_updates"] = self.ema_net.state_dict(), self.ema_updates
            ck["average"] = self._average_kind
        tmp = self.out / "last.pt.tmp"
        torch.save(ck, tmp)
        os.replace(tmp, self.out / "last.pt")

    # -- data --------------------------------------------------------------------------------
    def _loader(self) -> torch.utils.data.DataLoader:
        from .data import build_training_dataset

        ds = build_training_dataset(data_root=self.cfg.data_root, size=tuple(self.cfg.size),
                                    composite_prob=self.cfg.composite_prob, coco_repeat=self.cfg.coco_repeat,
                                    negative_prob=self.cfg.negative_prob,
                                    teacher_cache=self.cfg.teacher_cache,
                                    seed=self.cfg.seed + 1000 * self.rank + self.step,
                                    own_data=[(d, Path(d).resolve().name) for d in self.cfg.own_data],
                                    own_repeat=self.cfg.own_repeat)
        return training_loader(ds, self.cfg, seed=self.cfg.seed + 1000 * self.rank + self.step,
                               pin_memory=self.device.type == "cuda")

    def lr_at(self, step: int) -> float:
        lr = self.cfg.lr * min(1.0, (step - self.warmup_from + 1) / max(1, self.cfg.warmup_steps))
        for s in (*self.cfg.lr_decay_at, *self.timed_decay_at):
            if step >= s:
                lr *= 0.1
        return lr

    # -- loop --------------------------------------------------------------------------------
    def run(self) -> None:
        """Train until max_steps / max_hours / SIGTERM; always leaves a checkpoint behind, also
        when a data worker dies (e.g. a SIGTERM sent to the whole process group)."""
        try:
            self._run()
        except BaseException:
            self.save()
            if not self._stop:
                raise
            _logger.info("stopped at step %d; checkpoint saved", self.step)

    def _run(self) -> None:
        cfg = self.cfg
        signal.signal(signal.SIGTERM, self._request_stop)
        start = time.time()
        last_save = time.time()
        loader = self._loader()
        weights = LossWeights(**cfg.loss)
        self._train_mode()
        while not self._stop:
            t_epoch = time.time()
            sums: dict[str, Any] = {}  # floats, or tensors on the device (no sync per step)
            n = 0
            data_wait = 0.0  # seconds the step loop waited for the data workers
            t_ready = time.time()
            for imgs, targets in loader:
                data_wait += time.time() - t_ready
                for g in self.opt.param_groups:
                    g["lr"] = self.lr_at(self.step)
                    if g.get("name") == "mask_unit":
                        g["lr"] *= cfg.dynconv_lr / cfg.lr
                imgs = imgs.to(self.device, non_blocking=True)
                if cfg.channels_last:
                    imgs = imgs.contiguous(memory_format=torch.channels_last)
                targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
                if cfg.dynconv:
                    self.net.dynconv_noise = self._dynconv_epoch() < 0.8 * cfg.dynconv_epochs
                if cfg.dynconv and cfg.dynconv_freeze:
                    loss, parts = self._mask_unit_loss(imgs, targets)
                else:
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                        out = self.model(imgs)
                    if cfg.amp:
                        out = type(out)(*(t.float() for t in out))
                    loss, parts = stage1_loss(out, targets, weights, as_float=False)
                if cfg.dynconv and not cfg.dynconv_freeze:
                    sp = dynconv.sparsity_loss(self.net.dynconv_costs, cfg.dynconv_budget, self._dynconv_epoch(),
                                               cfg.dynconv_epochs, weight=cfg.dynconv_weight)
                    loss = loss + sp.total
                    parts.update(sparsity=float(sp.total.detach()), active=float(sp.fraction.detach()))
                    parts["total"] = float(loss.detach())
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
                self.opt.step()
                self.step += 1
                self._update_ema()
                n += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                if self.step % 10 == 0:
                    parts = {k: float(v) for k, v in parts.items()}
                if self.step % 10 == 0 and self.rank == 0 and "mask_bce" in parts:
                    rate = n * cfg.batch_size * self.world / (time.time() - t_epoch)
                    _logger.info("step %d  mask unit BCE %.4f  active %.3f  person cells active %.3f  "
                                 "background cells active %.3f  %.1f img/s", self.step, parts["mask_bce"],
                                 parts["active"], parts["recall"], parts["background_on"], rate)
                elif self.step % 10 == 0 and self.rank == 0:
                    rate = n * cfg.batch_size * self.world / (time.time() - t_epoch)
                    extra = (f"  cost share {parts['active']:.3f} (budget {cfg.dynconv_budget})"
                             if cfg.dynconv else "")
                    wait = 100.0 * data_wait / max(time.time() - t_epoch, 1e-9)
                    _logger.info("step %d  loss %.4f (hm %.4f paf %.4f 3d %.4f)  %.2f img/s (%.0f%% waiting "
                                 "for data)  lr %.2e%s", self.step, parts["total"], parts["heatmap"], parts["paf"],
                                 parts["enc3d"], rate, wait, self.lr_at(self.step), extra)
                if time.time() - last_save > cfg.save_every_min * 60:
                    self.save()
                    last_save = time.time()
                hours = (time.time() - start) / 3600
                t_ready = time.time()
                if cfg.lr_decay_after_hours is not None and hours >= cfg.lr_decay_after_hours \
                        and not self.timed_decay_at:
                    self.timed_decay_at.append(self.step)
                    _logger.info("learning rate drops 10x at step %d (--lr-decay-after-hours)", self.step)
                if (cfg.max_steps and self.step >= cfg.max_steps) or (cfg.max_hours and hours >= cfg.max_hours) \
                        or self._stop:
                    self._stop = True
                    break
            if n == 0:
                break
            record = {"step": self.step, "time": time.time(), "images": n * cfg.batch_size * self.world,
                      "seconds": time.time() - t_epoch, "data_wait_s": round(data_wait, 2),
                      **{k: float(v) / n for k, v in sums.items()}}
            if self.rank == 0 and cfg.dev_set and n == cfg.epoch_steps:
                record.update(self.evaluate())
            self.history.append(record)
            self.save()
            last_save = time.time()
            if self.rank == 0:
                _append_jsonl(self.out / "log.jsonl", record)
                plot_history(self.history, self.out / "loss.png")
                _logger.info("epoch done: %s", json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                            for k, v in record.items()}))
        self.save()

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_net is None:
            return
        if self.cfg.swa_every > 0:
            if self.step % self.cfg.swa_every:
                return
            decay = self.ema_updates / (self.ema_updates + 1)
        else:
            decay = min(self.cfg.ema_decay, self.ema_updates / (self.ema_updates + 1))
        self.ema_updates += 1
        torch._foreach_lerp_(list(self.ema_net.parameters()), list(self.net.parameters()), 1.0 - decay)
        for avg, cur in zip(self.ema_net.buffers(), self.net.buffers()):
            if avg.is_floating_point():
                avg.lerp_(cur, 1.0 - decay)
            else:
                avg.copy_(cur)

    def evaluate(self) -> dict[str, float]:
        """Dev-set AP of the exported weights (the moving average when there is one; then the raw
        weights' AP too, as dev_*_raw)."""
        out: dict[str, float] = {}
        if self.ema_net is not None:
            out.update(self._evaluate(self.ema_net))
            out.update({f"{k}_raw": v for k, v in self._evaluate(self.net).items()})
        else:
            out.update(self._evaluate(self.net))
        return out

    def _evaluate(self, net: Stage1Net) -> dict[str, float]:
        from .evaluate import evaluate_coco
        from ..estimator import PoseEstimator

        net.eval()  # also drops inference snapshots of older weights
        try:
            # DynConv: the sparse path with the mask unit's masks
            est = PoseEstimator.from_networks(net, None, tracking=False, fit_skeleton=False,
                                              dynconv="learned" if self.cfg.dynconv else False)
            res = evaluate_coco(est, self.cfg.dev_set)
            out = {"dev_ap": res["ap"], "dev_ap_body": res["ap_body"], "dev_pck": res["pck_body@0.2"]}
            if "computed_share" in res:
                out["dev_active"] = res["computed_share"]
            return out
        except Exception as e:  # evaluation must never kill a long training run
            _logger.warning("dev evaluation failed: %s", e)
            return {}
        finally:
            self._train_mode()

    def _mask_unit_loss(self, imgs: torch.Tensor, targets: dict[str, torch.Tensor]):
        """BCE of the mask unit's logits against the cells of people's boxes (network frozen)."""
        with torch.no_grad():
            tap = self.net.mask_tap(imgs)
        logits = self.mask_model(tap)[:, 0]
        cells, weight = targets["person_cells"], targets["person_weight"]
        h, w = min(logits.shape[1], cells.shape[1]), min(logits.shape[2], cells.shape[2])
        logits, cells, weight = logits[:, :h, :w], cells[:, :h, :w], weight[:, :h, :w]
        bce = F.binary_cross_entropy_with_logits(
            logits, cells, weight=weight, pos_weight=torch.tensor(self.cfg.person_pos_weight, device=logits.device))
        on = (logits.detach() >= 0).float()
        person, background = (cells > 0) & (weight > 0), (cells == 0) & (weight > 0)
        parts = {"mask_bce": float(bce.detach()), "total": float(bce.detach()), "active": float(on.mean()),
                 "recall": float(on[person].mean()) if person.any() else 1.0,
                 "background_on": float(on[background].mean()) if background.any() else 0.0}
        return bce, parts

    def _train_mode(self) -> None:
        self.net.train()
        if self.cfg.dynconv and self.cfg.dynconv_freeze:  # keep the loaded BN statistics
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _dynconv_epoch(self) -> int:
        return (self.step - self.dynconv_start) // max(1, self.cfg.epoch_steps)

    def _request_stop(self, *_: Any) -> None:
        self._stop = True


def training_loader(ds, cfg: TrainConfig, seed: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches of `cfg.epoch_steps * cfg.batch_size` fresh draws per epoch (see DrawSampler)."""
    from .data import DrawSampler

    sampler = DrawSampler(len(ds), cfg.epoch_steps * cfg.batch_size, seed)
    # Workers start fresh ("spawn"): a forked worker inherits OpenCV's thread pool mid-use from a
    # parent that has already resized images, and can hang for ever in its first cv2 call.
    return torch.utils.data.DataLoader(
        ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_targets,
        num_workers=cfg.workers, persistent_workers=cfg.workers > 0, pin_memory=pin_memory,
        worker_init_fn=_seed_worker, prefetch_factor=4 if cfg.workers > 0 else None,
        multiprocessing_context="spawn" if cfg.workers > 0 else None)


def _seed_worker(worker_id: int) -> None:
    cv2.setNumThreads(1)  # one thread per data worker: many workers would otherwise oversubscribe the cores
    seed = (torch.initial_seed() + worker_id) % 2**32
    np.random.seed(seed)
    import random
    random.seed(seed)


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Loss curves (and dev AP) as a PNG; skipped quietly without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    if not history:
        return
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for k in ("total", "heatmap", "paf", "enc3d"):
        if k in history[0]:
            axes[0].plot(steps, [h.get(k, math.nan) for h in history], label=k)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title("training loss (epoch means)")
    axes[0].legend()
    labels = {"dev_ap": "AP, 17 joints", "dev_ap_body": "body AP (the exported weights)",
              "dev_ap_body_raw": "body AP, last step's weights (beside --ema)"}
    for k, label in labels.items():
        pts = [(h["step"], h[k]) for h in history if k in h]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", markersize=3, label=label)
    axes[1].set_xlabel("step")
    axes[1].set_title("coco_dev AP")
    if axes[1].lines:
        axes[1].legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
