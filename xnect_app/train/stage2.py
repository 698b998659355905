"""Stage II training on 2D/3D pairs: synthetic skeletons, plus real teacher 3D poses when cached.

Each example is a person placed in a synthetic camera view. Its Stage I maps are rendered with
the same `render_targets` the Stage I trainer uses and read out with the same `stage2_inputs`
and `read_3d` the decoder uses, then corrupted the way a real network's output is: 2D jitter,
encoding noise, garbage in the channels Stage I leaves unsupervised, and dropped joints and
whole limbs (occlusion). The network learns to complete and clean the read-out.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import skeleton
from ..nn.stage2 import Stage2Config, Stage2Net
from ..pose.readout import normalise_2d
from ..pose.synthetic import place_people, random_people
from ..pose.targets import to_map
from ..types import Intrinsics
from .data import TRAIN_SOURCES, read_training_source
from .teacher import blazepose_to_ours_3d

_logger = logging.getLogger(__name__)
J2, J3, NECK = skeleton.NUM_JOINTS_2D, skeleton.NUM_JOINTS_3D, skeleton.NECK

# Joints dropped together when a limb is occluded (2D indices).
_LIMB_GROUPS = ((2, 3, 4), (5, 6, 7), (8, 9, 10), (11, 12, 13), (0, 14, 15, 16, 17, 18), (3, 4), (6, 7),
                (9, 10), (12, 13))


@dataclass
class Stage2TrainConfig:
    out_dir: str = "runs/stage2"
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    teacher_cache: str = "data_cache"
    data_root: str | None = None  # the datasets (needed with pair_frac > 0)
    map_size: tuple[int, int] = (256, 160)
    joint_drop: float = 0.1
    limb_drop: float = 0.3
    jitter_cells: float = 0.3
    # Encoding noise per example, uniform in [enc_noise_m, enc_noise_max_m]: a real Stage I's
    # read-out is far off the truth at times (about 245 mm MPJPE against the teacher on coco_dev
    # for today's weights), so Stage II must learn when to trust the 2D geometry instead.
    enc_noise_m: float = 0.03
    enc_noise_max_m: float = 0.3
    enc_drop: float = 0.25  # share of examples with no encodings at all (lifting from 2D alone)
    use_encodings: bool = True  # False: a 2D -> 3D lifter (Stage2Config.use_encodings)
    # Share of examples that are real people: their annotated 2D (LSPET / COCO, face points from
    # the teacher) with the teacher's 3D, instead of the 3D's own projection in a synthetic camera.
    pair_frac: float = 0.0
    seed: int = 0


@dataclass
class RealPairs:
    """Annotated people with teacher 3D: kp2d (N, 19, 3) pixels and label state (0 = none),
    kp3d_mm (N, 21, 3) root-relative, camera axes."""

    kp2d: np.ndarray
    kp3d_mm: np.ndarray

    def __len__(self) -> int:
        return len(self.kp2d)

    def sample(self, rng: np.random.Generator, n: int, map_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """n of them, mirrored at random, 2D scaled into pixels of a `map_size` image to the sizes
        synthetic people have there (the larger side of the joints' box 25..100 px, log-uniform; `make_batch`
        turns both into map cells): (kp2d n x 19 x 3 with state 0/1, kp3d n x 21 x 3 mm)."""
        idx = rng.integers(len(self), size=n)
        kp, k3 = self.kp2d[idx].copy(), self.kp3d_mm[idx].copy()
        flip = rng.uniform(size=n) < 0.5
        kp[flip] = kp[flip][:, list(skeleton.FLIP_2D)]
        kp[flip, :, 0] *= -1
        k3[flip] = k3[flip][:, list(skeleton.FLIP_3D)]
        k3[flip, :, 0] *= -1
        lab = kp[..., 2] > 0
        xy = np.where(lab[..., None], kp[..., :2], np.nan)
        with np.errstate(invalid="ignore"):
            lo, hi = np.nanmin(xy, 1), np.nanmax(xy, 1)
        extent = np.maximum(np.nan_to_num(hi - lo).max(1), 1.0)
        scale = np.exp(rng.uniform(np.log(25), np.log(100), n)) / extent
        w, h = map_size
        xy = (xy - np.nan_to_num(lo)[:, None]) * scale[:, None, None] + np.array([0.1 * w, 0.1 * h])
        kp[..., :2] = np.nan_to_num(xy)
        kp[..., 2] = lab
        return kp, k3


def load_real_pairs(data_root: str, teacher_cache: str) -> RealPairs | None:
    """The training sets' people that have teacher 3D (see `RealPairs`); coco_dev is never read."""
    kp2d, kp3d = [], []
    for name in TRAIN_SOURCES:
        folder = Path(data_root) / name
        if not folder.is_dir():
            continue
        for r in read_training_source(folder, name, teacher_cache):
            for i in range(len(r.keys)):
                if r.conf_3d[i] > 0 and np.isfinite(r.kp3d_mm[i]).all():
                    kp2d.append(r.kp2d[i])
                    kp3d.append(r.kp3d_mm[i])
    if not kp2d:
        return None
    return RealPairs(np.stack(kp2d).astype(np.float64), np.stack(kp3d).astype(np.float64))


def make_batch(rng: np.random.Generator, n: int, cfg: Stage2TrainConfig,
               real_poses_mm: np.ndarray | None = None,
               pairs: RealPairs | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n examples: (feats n x 19 x 66, readout n x 21 x 3 m, valid n x 21, target n x 21 x 3 m).

    The Stage I encodings are built directly at the joints, as `render_targets` writes them
    inside the joints' discs and `stage2_inputs` / `read_3d` sample them (tested against that
    path), which is far faster than rendering whole maps.
    """
    w, h = cfg.map_size
    intr = Intrinsics.from_fov(w, h, 60.0)
    people = random_people(rng, n)
    use = np.zeros(n, bool)
    if real_poses_mm is not None and len(real_poses_mm):
        use = rng.uniform(size=n) < 0.5
        people["kp3d_rel_mm"][use] = real_poses_mm[rng.integers(len(real_poses_mm), size=int(use.sum()))]
    depth = rng.uniform(2500, 12000, n)
    centres = np.stack([rng.uniform(0.2 * w, 0.8 * w, n), rng.uniform(0.4 * h, 0.6 * h, n)], 1)
    scene = place_people(people, centres, depth, intr, (w, h))
    kp = scene.kp2d.copy()
    kp[use, 14:, 2] = 0.0  # a real pose's face does not match the synthetic head
    if pairs is not None and len(pairs) and cfg.pair_frac > 0:
        real = np.nonzero(rng.uniform(size=n) < cfg.pair_frac)[0]
        kp[real], people["kp3d_rel_mm"][real] = pairs.sample(rng, len(real), cfg.map_size)
    kp3d_m = people["kp3d_rel_mm"] / 1000.0
    kp[..., :2] = to_map(kp[..., :2]) + rng.normal(0, cfg.jitter_cells, kp[..., :2].shape)
    keep = kp[..., 2] > 0
    keep &= rng.uniform(size=keep.shape) > cfg.joint_drop
    for i in np.nonzero(rng.uniform(size=n) < cfg.limb_drop)[0]:
        keep[i, list(_LIMB_GROUPS[rng.integers(len(_LIMB_GROUPS))])] = False
    kp[..., 2] = np.where(keep, rng.uniform(0.3, 1.0, keep.shape), 0.0)
    noise = rng.uniform(cfg.enc_noise_m, max(cfg.enc_noise_m, cfg.enc_noise_max_m), (n, 1, 1))
    enc = encodings_at_joints(kp3d_m, keep, rng, noise)
    enc[rng.uniform(size=n) < cfg.enc_drop] = 0.0
    feats = np.concatenate([enc, normalise_2d(kp)[0], kp[..., 2:3]], -1)
    feats = np.where(keep[..., None], feats, 0.0)
    read, valid = readout_at_joints(enc, keep)
    valid &= np.abs(enc).sum((1, 2))[:, None] > 0  # no encodings: nothing read out
    ok = keep.sum(1) >= 3
    return (feats[ok].astype(np.float32), np.nan_to_num(read[ok]).astype(np.float32),
            valid[ok].astype(np.float32), kp3d_m[ok].astype(np.float32))


def encodings_at_joints(kp3d_m: np.ndarray, detected: np.ndarray, rng: np.random.Generator,
                        noise_m: float | np.ndarray, garbage_m: float = 0.2) -> np.ndarray:
    """(n, 19, 63) the encodings a Stage I network gives at each 2D joint: triplet j holds joint
    j's root-relative position at body joint j, the neck holds the full pose, and channels the
    targets leave unsupervised hold garbage."""
    n = len(kp3d_m)
    enc = rng.normal(0, garbage_m, (n, J2, 3 * J3))
    flat = kp3d_m.reshape(n, 3 * J3)
    noise = np.broadcast_to(np.asarray(noise_m, float).reshape(-1), (n,))[:, None]  # per example
    for j in range(14):
        enc[:, j, 3 * j:3 * j + 3] = kp3d_m[:, j] + noise * rng.normal(0, 1, (n, 3))
    enc[:, NECK] = flat + noise * rng.normal(0, 1, flat.shape)
    return np.where(detected[..., None], enc, 0.0)


def readout_at_joints(enc: np.ndarray, detected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`read_3d` on encodings already sampled at the joints: (n, 21, 3) metres and valid."""
    n = len(enc)
    has_neck = detected[:, NECK]
    pose = np.where(has_neck[:, None, None], enc[:, NECK].reshape(n, J3, 3), np.nan)
    for j in range(14):
        own = enc[:, j, 3 * j:3 * j + 3]
        pose[:, j] = np.where(detected[:, j, None], own, pose[:, j])
    valid = np.zeros((n, J3), bool)
    valid[:, :14] = detected[:, :14]
    valid |= has_neck[:, None]
    return pose, valid


def load_teacher_poses(cache_dir: str) -> np.ndarray | None:
    """All accepted teacher 3D poses (N x 21 x 3 mm, root-relative) from the cached label files."""
    poses = []
    for f in sorted(Path(cache_dir).glob("teacher_*.npz")):
        with np.load(f) as z:
            if "world" not in z.files:
                continue
            ok = z["ok"] if "ok" in z.files else np.ones(len(z["world"]), bool)
            poses += [blazepose_to_ours_3d(w) for w in z["world"][ok]]
    poses = [p for p in poses if np.isfinite(p).all()]
    return np.stack(poses) if poses else None


def train_stage2(cfg: Stage2TrainConfig) -> Path:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = Stage2Net(Stage2Config(use_encodings=cfg.use_encodings))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    real = load_teacher_poses(cfg.teacher_cache)
    _logger.info("stage2: %s real teacher poses", 0 if real is None else len(real))
    if cfg.pair_frac > 0 and cfg.data_root is None:
        raise ValueError("pair_frac > 0 trains on annotated people: give data_root, the datasets' folder")
    pairs = load_real_pairs(cfg.data_root, cfg.teacher_cache) if cfg.pair_frac > 0 else None
    if cfg.pair_frac > 0:
        _logger.info("stage2: %d annotated people with teacher 3D", 0 if pairs is None else len(pairs))
    val = make_batch(np.random.default_rng(12345), 1024, cfg, real, pairs)
    history = []
    t0 = time.time()
    for step in range(1, cfg.steps + 1):
        f, r, v, y = (torch.from_numpy(a) for a in make_batch(rng, cfg.batch_size, cfg, real, pairs))
        net.train()
        pred = net(f, r, v)
        loss = (pred - y).norm(dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps:
            m = evaluate_stage2(net, val)
            history.append({"step": step, "train_mpjpe_mm": loss.item() * 1000, **m})
            _logger.info("stage2 step %d  train %.1f mm  val %.1f mm, on read-out joints %.1f mm (read-out "
                         "alone %.1f mm)  %.0fs", step, loss.item() * 1000, m["val_mpjpe_mm"],
                         m["val_mpjpe_readout_joints_mm"], m["readout_mpjpe_mm"], time.time() - t0)
    ck = {"model": net.state_dict(), "stage2_config": net.cfg.to_dict(), "step": cfg.steps,
          "history": history, "config": dataclasses.asdict(cfg)}
    tmp = out / "last.pt.tmp"
    torch.save(ck, tmp)
    os.replace(tmp, out / "last.pt")
    return out / "last.pt"


@torch.no_grad()
def evaluate_stage2(net: Stage2Net, batch) -> dict[str, float]:
    """MPJPE (mm) of Stage II on all joints and on the joints the read-out has, and of the plain
    read-out it starts from (on its valid joints)."""
    f, r, v, y = (torch.from_numpy(a) for a in batch)
    net.eval()
    pred = net(f, r, v)
    err = (pred - y).norm(dim=-1) * 1000
    base_err = ((r - y).norm(dim=-1) * 1000)[v > 0]
    return {"val_mpjpe_mm": err.mean().item(), "val_mpjpe_readout_joints_mm": err[v > 0].mean().item(),
            "readout_mpjpe_mm": base_err.mean().item()}
