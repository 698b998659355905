"""Stage I losses: masked L2 on heatmaps and PAFs, neighbourhood-weighted L2 on 3D encodings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..nn.stage1 import Stage1Output


@dataclass(frozen=True)
class LossWeights:
    heatmap: float = 1.0
    paf: float = 1.0
    enc3d: float = 500.0
    # Heatmap pixels near joints count this much more than background, so small people are not
    # drowned by the mostly empty maps.
    heatmap_positive_boost: float = 9.0
    # Same for PAF cells on a limb: without it the PAF head sat at zero output for 15k images
    # (loss 152 -> 147, zero prediction 154) while the heatmaps learned.
    paf_positive_boost: float = 9.0


def stage1_loss(out: Stage1Output, targets: dict[str, torch.Tensor],
                w: LossWeights = LossWeights(), as_float: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
    """targets: heatmaps, pafs, enc3d, enc3d_weight (N x C x h x w), hm_mask (N x 19 x h x w),
    paf_mask (N x 36 x h x w), all float. Returns the total and its parts: floats, or with
    as_float=False detached tensors, so a GPU step does not wait for its forward pass to finish."""
    n = out.heatmaps.shape[0]
    hm_t = targets["heatmaps"]
    hm_w = targets["hm_mask"] * (1.0 + w.heatmap_positive_boost * hm_t)
    l_hm = (hm_w * (out.heatmaps - hm_t) ** 2).sum() / n / _spatial(hm_t)
    paf_t = targets["pafs"]
    on_limb = (paf_t != 0).float()
    paf_w = targets["paf_mask"] * (1.0 + w.paf_positive_boost * on_limb)
    l_paf = (paf_w * (out.pafs - paf_t) ** 2).sum() / n / _spatial(hm_t)
    ew = targets["enc3d_weight"]
    l_enc = (ew * (out.enc3d - targets["enc3d"]) ** 2).sum() / ew.sum().clamp(min=1.0)
    total = w.heatmap * l_hm + w.paf * l_paf + w.enc3d * l_enc
    parts = {"heatmap": l_hm, "paf": l_paf, "enc3d": l_enc, "total": total}
    if as_float:
        return total, {k: float(v.detach()) for k, v in parts.items()}
    return total, {k: v.detach() for k, v in parts.items()}


def _spatial(t: torch.Tensor) -> float:
    # Per-image sums are divided by the map area in units of a 32x32 map, so the loss scale does
    # not change with the crop size.
    return t.shape[-1] * t.shape[-2] / 1024.0
