"""Release: training checkpoints -> the weights file PoseEstimator loads (`xnect-train export`).

Stage I from one checkpoint or the mean of several (optionally with re-estimated BatchNorm
statistics and a mask unit fitted to it), Stage II from one checkpoint or an ensemble of several;
the file is written by `xnect_app.weights`.
"""
from __future__ import annotations

import datetime
import os

import torch

from ..nn.stage1 import Stage1Config, Stage1Net
from ..nn.stage2 import build_stage2
from ..weights import WEIGHTS_FORMAT, checkpoint_weights, read_checkpoint, read_document, write_weights_file
from .data import build_training_dataset
from .trainer import image_tensor


def _with_mask_unit(s1: dict, s1_cfg: dict, mask_ckpt: str) -> tuple[dict, dict, dict]:
    """Stage I weights plus the DynConv mask unit of a `--dynconv --dynconv-freeze` run fitted to
    this very network (checked to float16 precision, the bundled weights' storage)."""
    m, m_cfg, ck = read_checkpoint(mask_ckpt)
    if not m_cfg.get("dynconv") or not any(k.startswith("mask_unit.") for k in m):
        raise ValueError(f"{mask_ckpt}: no DynConv mask unit in this checkpoint")
    for k, v in s1.items():
        if k.startswith("mask_unit."):
            continue
        if k not in m or not torch.equal(v.half() if v.is_floating_point() else v,
                                          m[k].half() if m[k].is_floating_point() else m[k]):
            raise ValueError(f"{mask_ckpt}: its network differs from the Stage I checkpoint ({k}); fit the "
                             "mask unit to these weights with `xnect-train stage1 --dynconv --dynconv-freeze`")
    s1 = {**{k: v for k, v in s1.items() if not k.startswith("mask_unit.")},
          **{k: v for k, v in m.items() if k.startswith("mask_unit.")}}
    s1_cfg = {**s1_cfg, **{k: v for k, v in m_cfg.items() if k.startswith("dynconv")}}
    info = {"checkpoint_step": int(ck.get("step", 0)),
            "steps": int(ck.get("step", 0)) - int(ck.get("dynconv_start", 0)),
            "frozen_network": bool(ck.get("config", {}).get("dynconv_freeze", False))}
    return s1, s1_cfg, info


def _read_stage2(path: str) -> tuple[dict, dict, int]:
    """(weights, config, step) of Stage II from a `stage2` training checkpoint or from a weights
    file (e.g. the bundled one, to keep its Stage II beside a new Stage I)."""
    ck = read_document(path)
    if ck.get("format") == WEIGHTS_FORMAT:
        if "stage2" not in ck:
            raise ValueError(f"{path}: this weights file has no Stage II")
        return ck["stage2"], ck["stage2_config"], int(ck.get("meta", {}).get("stage2_step", 0))
    s2, s2_cfg = checkpoint_weights(ck)
    return s2, ck.get("stage2_config", s2_cfg), int(ck.get("step", 0))


def _read_stage2_sources(paths: list[str]) -> tuple[dict, dict, list[int]]:
    """(weights, config, steps) of the Stage II to export: one source's network, or for several an
    ensemble of their networks (an ensemble among them joins with its members)."""
    if len(paths) == 1:
        s2, cfg, step = _read_stage2(paths[0])
        return s2, cfg, [step]
    weights: dict = {}
    members: list[dict] = []
    steps = []
    for path in paths:
        s2, cfg, step = _read_stage2(path)
        steps.append(step)
        parts = ([(c, f"members.{i}.") for i, c in enumerate(cfg["members"])] if "members" in cfg
                 else [(cfg, "")])
        for c, prefix in parts:
            weights.update({f"members.{len(members)}.{k[len(prefix):]}": v for k, v in s2.items()
                            if k.startswith(prefix)})
            members.append(c)
    cfg = {"members": members}
    try:
        build_stage2(cfg).load_state_dict({k: v.float() for k, v in weights.items()})
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"the Stage II networks of {', '.join(paths)} do not form an ensemble: "
                         f"{str(e).splitlines()[0]}") from None
    return weights, cfg, steps


def _weights_kind(ck: dict, averaged: bool) -> str:
    if not averaged or ck.get("ema") is None:
        return "raw"
    if ck.get("average") == "swa":
        return f"mean of {ck.get('ema_updates', 0)} snapshots (--swa-every)"
    return "moving average"


def _read_stage1(path: str, averaged: bool = True) -> tuple[dict, dict, dict]:
    """(weights, config, meta) of Stage I from a `stage1` training checkpoint or from a weights file
    (e.g. the one a lent GPU sends back, to add a mask unit fitted to it); a weights file keeps its
    own step and history, and loses its old mask unit."""
    ck = read_document(path)
    today = datetime.date.today().isoformat()
    if ck.get("format") == WEIGHTS_FORMAT:
        old = ck.get("meta", {})
        s1 = {k: v.float() if v.is_floating_point() else v for k, v in ck["stage1"].items()
              if not k.startswith("mask_unit.")}
        cfg = {**ck["stage1_config"], "dynconv": False}
        meta = {k: old[k] for k in ("stage1_step", "dynconv_start", "stage1_weights", "history", "config") if k in old}
        return s1, cfg, {**meta, "exported": today}
    s1, s1_cfg = checkpoint_weights(ck, averaged)
    return s1, s1_cfg, {"stage1_step": int(ck.get("step", 0)), "dynconv_start": int(ck.get("dynconv_start", 0)),
                        "exported": today,
                        "stage1_weights": _weights_kind(ck, averaged),
                        "history": ck.get("history", []), "config": ck.get("config", {})}


def recalibrate_bn(s1: dict, s1_cfg: dict, crops: int, data_root: str | os.PathLike,
                   size: tuple[int, int] = (512, 320), seed: int = 0) -> dict:
    """Stage I weights with their BatchNorm statistics re-estimated on `crops` training crops
    (an average over all of them; every other weight unchanged). A moving average of the weights
    (--ema) also averages the statistics of networks that no longer exist; re-estimated, session
    13's GPU file went from coco_dev body AP 0.146 to 0.153-0.163 (four crop samples)."""
    import numpy as np

    net = Stage1Net(Stage1Config.from_dict({**s1_cfg, "dynconv": False}))
    net.load_state_dict({k: v for k, v in s1.items() if not k.startswith("mask_unit.")})
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    ds = build_training_dataset(data_root, size=size, seed=seed)
    picks = np.random.default_rng(seed).choice(len(ds), min(crops, len(ds)), replace=False)
    net.train()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)  # the crops' augmentation draws on torch's seed: same crops every run
        for i in range(0, len(picks), 8):
            net(torch.stack([image_tensor(ds[int(j)].image) for j in picks[i:i + 8]]))
    new = net.state_dict()
    return {k: new[k] if k in new else v for k, v in s1.items()}


def _read_stage1_sources(paths: list[str], averaged: bool = True) -> tuple[dict, dict, dict]:
    """`_read_stage1` of one checkpoint, or for several the plain mean of their Stage I weights (a
    "model soup" of one run's checkpoints: session 18's five scored coco_dev body AP 0.174 against
    0.160-0.171 each); config and history from the last."""
    if len(paths) == 1:
        return _read_stage1(paths[0], averaged)
    sources = [_read_stage1(p, averaged) for p in paths]
    s1, cfg, meta = sources[-1]
    for path, (other, other_cfg, _) in zip(paths, sources):
        if other.keys() != s1.keys() or {**other_cfg, "dynconv": False} != {**cfg, "dynconv": False}:
            raise ValueError(f"{path}: its Stage I differs from {paths[-1]}'s (backbone or heads); only "
                             "checkpoints of one network can be averaged")
    mean = {k: (sum(src[0][k].float() for src in sources) / len(sources) if v.is_floating_point() else v)
            for k, v in s1.items()}
    steps = [int(m.get("stage1_step", 0)) for _, _, m in sources]
    kinds = ", ".join(m.get("stage1_weights", "?") for _, _, m in sources)
    meta = {**meta, "stage1_source_steps": steps, "stage1_weights": f"mean of {len(paths)} checkpoints ({kinds})"}
    return mean, cfg, meta


def export_weights(stage1_ckpt: str | list[str], stage2_ckpt: str | list[str] | None, out: str, half: bool = True,
                   mask_unit_ckpt: str | None = None, averaged: bool = True, bn_crops: int = 0,
                   data_root: str | os.PathLike | None = None) -> None:
    """Write a weights file: Stage I (several `stage1_ckpt`: the mean of their weights; optionally
    with the mask unit of another run fitted to it, `mask_unit_ckpt`) and Stage II (several
    `stage2_ckpt`: an ensemble averaging their poses);
    float16 storage unless half=False. Stage I is the moving
    average of its weights when the checkpoint keeps one, unless averaged=False. With bn_crops,
    Stage I's BatchNorm statistics are first re-estimated on that many training crops (fit a mask
    unit to the result, not before; they are drawn from the training data under `data_root`)."""
    s1, s1_cfg, meta = _read_stage1_sources([stage1_ckpt] if isinstance(stage1_ckpt, str) else list(stage1_ckpt),
                                            averaged)
    if bn_crops:
        if data_root is None:
            raise ValueError("re-estimating BatchNorm statistics (bn_crops) needs data_root, the training data")
        size = tuple(meta.get("config", {}).get("size") or (512, 320))
        s1 = recalibrate_bn(s1, s1_cfg, bn_crops, data_root, size=size)
        meta["bn_recalibrated_crops"] = bn_crops
    if mask_unit_ckpt:
        s1, s1_cfg, meta["mask_unit"] = _with_mask_unit(s1, s1_cfg, mask_unit_ckpt)
    doc = {
        "format": WEIGHTS_FORMAT,
        "stage1_config": s1_cfg,
        "stage1": {k: (v.half() if half and v.is_floating_point() else v) for k, v in s1.items()},
        "meta": meta,
    }
    if stage2_ckpt:
        s2, s2_cfg, s2_steps = _read_stage2_sources([stage2_ckpt] if isinstance(stage2_ckpt, str) else list(stage2_ckpt))
        doc["stage2_config"] = s2_cfg
        doc["stage2"] = {k: (v.half() if half and v.is_floating_point() else v) for k, v in s2.items()}
        doc["meta"]["stage2_step"] = max(s2_steps)
        if len(s2_steps) > 1:
            doc["meta"]["stage2_source_steps"] = s2_steps
    write_weights_file(doc, out)
