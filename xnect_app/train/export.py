"""Turn training checkpoints into the weights file PoseEstimator loads (models/*.pt)."""
from __future__ import annotations

import datetime
import os
from pathlib import Path

import torch

WEIGHTS_FORMAT = "xnect_app.weights/1"


def _state(path: str) -> tuple[dict, dict, dict]:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    return ck["model"], ck.get("stage1_config") or ck.get("stage2_config") or {}, ck


def export_weights(stage1_ckpt: str, stage2_ckpt: str | None, out: str, half: bool = True) -> None:
    s1, s1_cfg, ck1 = _state(stage1_ckpt)
    doc = {
        "format": WEIGHTS_FORMAT,
        "stage1_config": s1_cfg,
        "stage1": {k: (v.half() if half and v.is_floating_point() else v) for k, v in s1.items()},
        "meta": {"stage1_step": int(ck1.get("step", 0)), "dynconv_start": int(ck1.get("dynconv_start", 0)),
                 "exported": datetime.date.today().isoformat(),
                 "history": ck1.get("history", []),
                 "config": ck1.get("config", {})},
    }
    if stage2_ckpt:
        s2, s2_cfg, ck2 = _state(stage2_ckpt)
        doc["stage2_config"] = ck2.get("stage2_config", s2_cfg)
        doc["stage2"] = {k: (v.half() if half and v.is_floating_point() else v) for k, v in s2.items()}
        doc["meta"]["stage2_step"] = int(ck2.get("step", 0))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{out}.tmp"
    torch.save(doc, tmp)
    os.replace(tmp, out)
