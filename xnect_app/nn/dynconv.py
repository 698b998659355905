"""DynConv for the XNect Stage I network: compute only where people are.

Paper: Verelst & Tuytelaars, "Dynamic Convolutions: Exploiting Spatial Sparsity for Faster
Inference", CVPR 2020 (arXiv 1912.03203); design notes in xnect-spec.md §3. Written from the
spec, not copied from the authors' code (which has CUDA kernels only).

What lives here:
- The mask: `MaskUnit` (3x3 conv + global term, one logit per stride-8 cell), `gumbel_mask`
  (straight-through hard masks for training), `hard_mask` (logit >= 0 at inference), `dilate`.
- The cost model and losses: `LayerCost`, `block_costs` / `head_costs` (MACs per position of each
  layer, attributed to the dilated mask the layer runs on), `bound_schedule`, `sparsity_loss`.
- Sparse CPU execution: `Positions` (active cells of a grid), `SparseMap` (compact NHWC rows plus a
  grid -> row table whose sentinel row is zero), `SparseConv` (sparse im2col + one GEMM, BN
  folded), `SparseDeconv2x` (the heads' 4x4/stride-2 grouped transposed conv, one bmm per output
  parity) and `SparseStage1`, which runs a `Stage1Net` from the first masked block on.

Semantics (shared by training and inference). With output mask M (stride 8; M16 = 2x2 max-pool of
M for stride-16 blocks), every masked SelecSLS block outputs block(x) on M and 0 elsewhere (the
inactive "fill" is zero: SelecSLS has no identity path, spec §3.11), and the heads output their
maps on M and 0 elsewhere. A 3x3 layer whose output is needed on a set P runs on P and reads its
input on dilate(P); the planner runs every layer on the right dilation, so the sparse result equals
this masked-dense network exactly on every position (up to float rounding), not just approximately.

With a background image (`SparseStage1.set_background`, for motion masks on a static camera) the
fill is what a dense pass computes on the background, and it applies at every layer that a 3x3
conv reads (inside blocks and heads too), not only at block outputs: every layer then runs on M
alone, reading the background's values around it, and no dilated rings are computed. The
masked-dense reference (`_masked_dense`) applies the same per-layer fill, and the sparse result
equals it on M.
"""
from __future__ import annotations

import copy
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .heads import HEAD_GRAPH, ModuleOps, head_levels, run_heads
from .selecsls import fuse_bn, fuse_conv_bn

__all__ = [
    "MaskUnit", "gumbel_mask", "hard_mask", "dilate", "downsample_mask",
    "LayerCost", "block_costs", "head_costs", "bound_schedule", "SparsityLoss", "sparsity_loss",
    "Grid", "Positions", "SparseMap", "SparseConv", "SparseDeconv2x", "SparseStage1", "SparseStats",
    "DENSE_ABOVE", "mask_at", "as_mask", "fold_conv_bn", "fold_deconv_bn", "conv_taps",
]

_logger = logging.getLogger(__name__)

# Executed share of the masked MACs above which `SparseStage1` runs the masked-dense path instead.
# Measured break-even (`python -m xnect_app.bench.dynconv --sweep`, SelecSLS-60, 512x320, 1 thread
# of a Xeon with AVX-512): sparse/dense time 0.94 at a share of 0.63, 1.03 at 0.71.
DENSE_ABOVE = 0.65
# Background images whose dense features a sparse executor keeps (one per stream that takes turns).
BACKGROUND_CACHE = 16


# --------------------------------------------------------------------------- masks

class MaskUnit(nn.Module):
    """Mask unit: 3x3 conv (stride `stride`) + a global linear term (spec §3.3, squeeze style).

    With `hidden` > 0 the conv reads a small context tower first (3x3 stride `stride` to `hidden`
    channels, then 3x3 convs dilated 2 and 4: about 16 cells of context at stride 8, ~1.5% of
    SelecSLS-60's MACs at 512x320); the single 3x3 conv on stride-4 features sees too little to
    tell a person from background. Returns one logit per output cell (N x 1 x H/stride x
    W/stride). The bias starts positive so training from dense weights starts with every cell on.
    """

    def __init__(self, in_chs: int, stride: int = 1, init_bias: float = 3.0, hidden: int = 0):
        super().__init__()
        if hidden:
            self.body = nn.Sequential(
                nn.Conv2d(in_chs, hidden, 3, stride, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(hidden, hidden, 3, 1, padding=2, dilation=2), nn.ReLU(inplace=True),
                nn.Conv2d(hidden, hidden, 3, 1, padding=4, dilation=4), nn.ReLU(inplace=True))
            self.conv = nn.Conv2d(hidden, 1, 3, 1, padding=1, bias=True)
        else:
            self.body = None
            self.conv = nn.Conv2d(in_chs, 1, 3, stride, padding=1, bias=True)
        self.fc = nn.Linear(in_chs, 1, bias=False)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.constant_(self.conv.bias, init_bias)
        nn.init.zeros_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.body is None else self.body(x)
        return self.conv(y) + self.fc(x.mean((2, 3)))[:, :, None, None]


def gumbel_mask(logits: torch.Tensor, tau: float = 1.0, noise: bool = True,
                eps: float = 1e-8) -> torch.Tensor:
    """Hard 0/1 mask in the forward pass, sigmoid((logit + g1 - g2) / tau) gradient (spec §3.4)."""
    if noise:
        u1, u2 = torch.rand_like(logits), torch.rand_like(logits)
        g1 = -torch.log(-torch.log(u1 + eps) + eps)
        g2 = -torch.log(-torch.log(u2 + eps) + eps)
        logits = logits + g1 - g2
    return _StraightThrough.apply(torch.sigmoid(logits / tau))


class _StraightThrough(torch.autograd.Function):
    """Forward: exactly 0/1 (soft >= 0.5); backward: the gradient of soft, unchanged."""

    @staticmethod
    def forward(ctx, soft: torch.Tensor) -> torch.Tensor:
        return (soft >= 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def hard_mask(logits: torch.Tensor, max_active: float | None = None, grow: int = 0) -> torch.Tensor:
    """Inference mask: 1 where logit >= 0 (no noise, no sigmoid), grown by `grow` cells.

    max_active: at most this share of each image's cells stays active (the highest logits), a
    run-time cap on the cost for users who need a frame-rate floor."""
    mask = dilate((logits >= 0).to(logits.dtype), grow)
    if max_active is None or max_active >= 1.0:
        return mask
    flat = logits.flatten(1)
    keep = max(1, int(math.ceil(float(max_active) * flat.shape[1])))
    if keep >= flat.shape[1]:
        return mask
    top = torch.zeros_like(flat).scatter_(1, flat.topk(keep, dim=1).indices, 1.0)
    return mask * top.view_as(logits)


def dilate(mask: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Cells with an active cell in their (2*steps+1)^2 neighbourhood (N x 1 x H x W, float)."""
    if steps <= 0:
        return mask
    return F.max_pool2d(mask, 2 * steps + 1, 1, steps)


def downsample_mask(mask: torch.Tensor) -> torch.Tensor:
    """Stride-8 mask -> stride-16 mask: a cell is active if any of its 2x2 children is."""
    return F.max_pool2d(mask, 2, 2, ceil_mode=True)


def mask_at(m8: torch.Tensor, reduction: int, image_hw: tuple[int, int]) -> torch.Tensor:
    """The stride-8 mask carried to a block output at `reduction` (4, 8 or 16) of an H x W input."""
    if reduction == 8:
        return m8
    if reduction == 16:
        return downsample_mask(m8)
    if reduction == 4:
        h, w = (-(-image_hw[0] // 4), -(-image_hw[1] // 4))
        return m8.repeat_interleave(2, 2).repeat_interleave(2, 3)[..., :h, :w]
    raise ValueError(f"no DynConv mask at stride {reduction}")


# --------------------------------------------------------------------------- cost and losses

@dataclass
class LayerCost:
    """One masked unit: (mask, MACs per active position) for each set its layers run on."""
    name: str
    terms: list[tuple[torch.Tensor, float]]

    def used(self) -> torch.Tensor:
        return sum(m.sum() * f for m, f in self.terms)

    def total(self) -> float:
        return float(sum(m.numel() * f for m, f in self.terms))


def _macs(layer: nn.Module) -> float:
    """MACs per output position of a conv (or per output pixel of a stride-2 transposed conv)."""
    conv = layer[0] if isinstance(layer, nn.Sequential) else layer
    if isinstance(conv, nn.ConvTranspose2d):
        return conv.weight.numel() / (conv.stride[0] * conv.stride[1])
    return float(conv.weight.numel())


def block_costs(name: str, block: nn.Module, mask: torch.Tensor) -> LayerCost:
    """SelecSLS block with output mask `mask`: conv1, conv2 run on D^2, conv3, conv4 on D, the rest on M."""
    d1 = dilate(mask)
    d2 = dilate(d1)
    return LayerCost(name, [(d2, _macs(block.conv1) + _macs(block.conv2)),
                            (d1, _macs(block.conv3) + _macs(block.conv4)),
                            (mask, _macs(block.conv5) + _macs(block.conv6))])


def head_costs(net: nn.Module, mask: torch.Tensor) -> LayerCost:
    """Stage I heads with stride-8 output mask `mask`: each layer on the mask grown by its level
    (`heads.head_levels`); stride-16 layers are attributed per stride-8 cell (a quarter)."""
    levels = head_levels(net)
    depth = max(levels.values())
    per_level = [0.0] * (depth + 1)
    for layer in HEAD_GRAPH:
        macs = _macs(getattr(net, layer.name))
        per_level[levels[layer.name]] += macs / 4 if layer.grid == 16 else macs
    rings = [mask]
    for _ in range(depth):
        rings.append(dilate(rings[-1]))
    return LayerCost("heads", [(rings[lv], per_level[lv]) for lv in range(depth, -1, -1)])


def bound_schedule(epoch: int, epochs: int, budget: float) -> tuple[float, float]:
    """Per-layer (lower, upper) fraction bounds: both = budget at epoch 0, [0, 1] from 33% on."""
    t = min(max(epoch / (0.33 * max(epochs, 1)), 0.0), 1.0)
    progress = math.cos(math.pi / 2 * t) ** 2
    return progress * budget, 1.0 - progress * (1.0 - budget)


class SparsityLoss(NamedTuple):
    total: torch.Tensor         # weight * (network + layers): add this to the task loss
    network: torch.Tensor       # (p - budget)^2
    layers: torch.Tensor        # mean over units of the squared bound violations
    fraction: torch.Tensor      # p: executed share of the conditional MACs
    layer_fractions: list[float]


def sparsity_loss(costs: Sequence[LayerCost], budget: float, epoch: int = 0, epochs: int = 1,
                  weight: float = 0.01) -> SparsityLoss:
    """DynConv budget criterion (spec §3.6) over the masked units of one forward pass."""
    if not costs:
        raise ValueError("no masked layers: the network was not run with DynConv masks")
    lower, upper = bound_schedule(epoch, epochs, budget)
    used = [c.used() for c in costs]
    totals = [c.total() for c in costs]
    fraction = sum(used) / sum(totals)
    network = (fraction - budget) ** 2
    per_layer = [u / t for u, t in zip(used, totals)]
    layers = torch.stack([F.relu(p - upper) ** 2 + F.relu(lower - p) ** 2 for p in per_layer]).mean()
    return SparsityLoss(weight * (network + layers), network, layers, fraction,
                        [float(p.detach()) for p in per_layer])


# --------------------------------------------------------------------------- sparse primitives

class Grid(NamedTuple):
    n: int
    h: int
    w: int

    @property
    def size(self) -> int:
        return self.n * self.h * self.w


class Positions:
    """Active cells of a grid as sorted flat indices n*H*W + y*W + x.

    Index tables derived from it (conv taps, the grid -> row table, row lookups) are memoised on
    the object: a forward pass builds its position sets once and every layer on them reuses them.
    """
    __slots__ = ("grid", "idx", "_memo")

    def __init__(self, grid: Grid, idx: torch.Tensor):
        self.grid, self.idx = grid, idx
        self._memo: dict = {}

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "Positions":
        n, _, h, w = mask.shape
        return cls(Grid(n, h, w), mask.reshape(-1).nonzero().flatten())

    @property
    def count(self) -> int:
        return int(self.idx.numel())

    def memo(self, key: tuple, make):
        """`make()`, computed once per key for this position set."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def decode(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hw = self.grid.h * self.grid.w
        n = torch.div(self.idx, hw, rounding_mode="floor")
        rem = self.idx - n * hw
        y = torch.div(rem, self.grid.w, rounding_mode="floor")
        return n, y, rem - y * self.grid.w

    def table(self) -> torch.Tensor:
        """grid.size + 1 entries: the row of each cell, `count` (the zero row) for the others."""
        def make():
            t = torch.full((self.grid.size + 1,), self.count, dtype=torch.long)
            t[self.idx] = torch.arange(self.count)
            return t
        return self.memo(("table",), make)

    def rows_of(self, subset: "Positions") -> torch.Tensor:
        """Row numbers of `subset`'s cells (which must all be in self) in self's order."""
        # the subset is kept in the value so that its id cannot be reused while memoised
        return self.memo(("rows_of", id(subset)), lambda: (subset, torch.searchsorted(self.idx, subset.idx)))[1]


def _grid_taps(out: Grid, src: Grid, kernel: int, stride: int) -> torch.Tensor:
    """out.size x k*k flat source indices read by a k x k 'same'-padded conv at every cell of
    `out`; padding -> src.size."""
    n, y, x = Positions(out, torch.arange(out.size)).decode()
    off = torch.arange(kernel) - kernel // 2
    yy = y[:, None] * stride + off
    xx = x[:, None] * stride + off
    flat = (n[:, None, None] * src.h + yy[:, :, None]) * src.w + xx[:, None, :]
    valid = ((yy >= 0) & (yy < src.h))[:, :, None] & ((xx >= 0) & (xx < src.w))[:, None, :]
    return torch.where(valid, flat, src.size).reshape(-1, kernel * kernel)


_GRID_TAPS: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # the tables of the last grids used


def conv_taps(out: Positions, src: Grid, kernel: int, stride: int) -> torch.Tensor:
    """n x k*k flat source indices read by a k x k 'same'-padded conv; padding -> src.size."""
    def make():
        key = (out.grid, src, kernel, stride)
        table = _GRID_TAPS.get(key)
        if table is None:  # built once per grid shape, then rows are picked for each mask
            table = _GRID_TAPS[key] = _grid_taps(out.grid, src, kernel, stride)
            while len(_GRID_TAPS) > 64:
                _GRID_TAPS.popitem(last=False)
        return table.index_select(0, out.idx)
    return out.memo(("taps", src, kernel, stride), make)


class SparseMap:
    """Feature rows of some cells of a grid; every other cell (and padding) reads as zero.

    rows: (count + 1) x C with a zero last row; pos: the cells the rows hold, in order (None: the
    rows are the whole grid in order, a dense map, plus the zero row).
    """

    def __init__(self, grid: Grid, rows: torch.Tensor, pos: Positions | None):
        self.grid = grid
        self.rows = rows
        self.pos = pos

    @classmethod
    def from_rows(cls, pos: Positions, rows: torch.Tensor) -> "SparseMap":
        return cls(pos.grid, rows, pos)

    @classmethod
    def from_dense(cls, x: torch.Tensor) -> "SparseMap":
        n, c, h, w = x.shape
        rows = x.new_empty(n * h * w + 1, c)
        rows[:-1].view(n, h, w, c).copy_(x.permute(0, 2, 3, 1))
        rows[-1].zero_()
        return cls(Grid(n, h, w), rows, None)

    @property
    def channels(self) -> int:
        return self.rows.shape[1]

    def gather(self, flat: torch.Tensor) -> torch.Tensor:
        """Rows of the cells `flat` (any shape, flattened; grid.size = padding -> zeros)."""
        flat = flat.reshape(-1)
        return self.rows.index_select(0, flat if self.pos is None else self.pos.table()[flat])

    def gather_taps(self, out: Positions, kernel: int, stride: int) -> torch.Tensor:
        """`gather(conv_taps(out, grid, kernel, stride))`, the row indices memoised on `out`."""
        def make():
            taps = conv_taps(out, self.grid, kernel, stride).reshape(-1)
            return (self.pos, taps if self.pos is None else self.pos.table()[taps])
        key = ("rows", self.grid, id(self.pos), kernel, stride)
        idx = out.memo(key, make)[1]
        return torch.index_select(self.rows, 0, idx, out=_scratch(idx.numel(), self.rows))

    def to_dense(self) -> torch.Tensor:
        g = self.grid
        if self.pos is None:
            dense = self.rows[:-1]
        else:
            dense = self.rows.index_select(0, self.pos.table()[:-1])
        return dense.view(g.n, g.h, g.w, -1).permute(0, 3, 1, 2).contiguous()


_SCRATCH = threading.local()


def _scratch(count: int, like: torch.Tensor) -> torch.Tensor:
    """A count x C buffer of like's channels and dtype, reused by every im2col gather of this thread.

    The gathered columns are consumed by the next GEMM at once; a fresh multi-MB tensor per layer
    costs page faults (measured: index_select of 18 MB 1.8 ms into a new tensor, 0.6 into a kept one).
    """
    c = like.shape[1]
    buf = getattr(_SCRATCH, "buf", None)
    if (buf is None or buf.numel() < count * c or buf.dtype != like.dtype or buf.device != like.device
            or _written_outside_inference_mode(buf)):
        buf = _SCRATCH.buf = like.new_empty(max(count * c, 1 << 20))
    return buf[:count * c].view(count, c)


def _written_outside_inference_mode(t: torch.Tensor) -> bool:
    """True for a tensor made under torch.inference_mode() when that mode is now off: torch refuses
    in-place writes to it, so a kept buffer must be made afresh."""
    return t.is_inference() and not torch.is_inference_mode_enabled()


def _new_rows(count: int, channels: int, like: torch.Tensor) -> torch.Tensor:
    rows = like.new_empty(count + 1, channels)
    rows[count].zero_()
    return rows


class SparseConv:
    """A k x k conv (+ folded BN) (+ ReLU) on compact rows: sparse im2col, then one GEMM."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: int = 1, relu: bool = True):
        cout, cin, k, k2 = weight.shape
        if k != k2 or k % 2 == 0:
            raise ValueError("SparseConv needs an odd square kernel")
        self.kernel, self.stride, self.relu = k, stride, relu
        self.in_chs, self.out_chs = cin, cout
        # rows of the im2col matrix are ordered (ky, kx, cin), like conv_taps' columns
        self.weight = weight.detach().permute(2, 3, 1, 0).reshape(k * k * cin, cout).contiguous()
        self.bias = bias.detach().to(weight.dtype).contiguous()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, relu: bool) -> "SparseConv":
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        return cls(conv.weight, bias, conv.stride[0], relu)

    def mm(self, cols: torch.Tensor) -> torch.Tensor:
        """cols (n x k*k*Cin) -> (n + 1) x Cout rows with a zero last row."""
        out = _new_rows(cols.shape[0], self.out_chs, cols)
        torch.addmm(self.bias, cols, self.weight, out=out[:-1])
        if self.relu:
            out[:-1].clamp_(min=0)
        return out

    def __call__(self, src: SparseMap, out: Positions) -> torch.Tensor:
        cols = src.gather_taps(out, self.kernel, self.stride)
        if self.kernel > 1:
            cols = cols.view(out.count, self.kernel * self.kernel * self.in_chs)
        return self.mm(cols)


# (parity of the output coordinate) -> [(input offset from out // 2, kernel index)]
_DECONV_TAPS = {0: ((-1, 3), (0, 1)), 1: ((0, 2), (1, 0))}


class SparseDeconv2x:
    """ConvTranspose2d(k=4, stride=2, padding=1, groups=G) (+ folded BN) + ReLU on compact rows.

    Each output cell reads a 2x2 input window whose kernel taps depend on the output's parity, so
    the cells are split into the four parity classes and each class is one batched GEMM over groups.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, groups: int, relu: bool = True):
        cin, cout_g, k, _ = weight.shape
        if k != 4:
            raise ValueError("SparseDeconv2x needs a 4x4 kernel")
        self.groups, self.relu = groups, relu
        self.in_g, self.out_g = cin // groups, cout_g
        self.out_chs = cout_g * groups
        w = weight.detach().view(groups, self.in_g, cout_g, k, k)
        self.weights = {}
        for py in (0, 1):
            for px in (0, 1):
                taps = [w[:, :, :, ky, kx] for _, ky in _DECONV_TAPS[py] for _, kx in _DECONV_TAPS[px]]
                stacked = torch.stack(taps, 1).reshape(groups, 4 * self.in_g, cout_g)
                self.weights[py, px] = stacked.contiguous()
        self.offsets = {p: torch.tensor([d for d, _ in _DECONV_TAPS[p]]) for p in (0, 1)}
        self.bias = bias.detach().to(weight.dtype).contiguous()

    def _plan(self, src: SparseMap, out: Positions) -> list[tuple[tuple[int, int], torch.Tensor, torch.Tensor]]:
        """Per output parity: (parity, output rows, flat input rows of the 2x2 windows)."""
        n, y, x = out.decode()
        g = src.grid
        plan = []
        for py in (0, 1):
            for px in (0, 1):
                sel = ((y % 2 == py) & (x % 2 == px)).nonzero().flatten()
                if sel.numel() == 0:
                    continue
                iy = torch.div(y[sel], 2, rounding_mode="floor")[:, None] + self.offsets[py]
                ix = torch.div(x[sel], 2, rounding_mode="floor")[:, None] + self.offsets[px]
                flat = (n[sel, None, None] * g.h + iy[:, :, None]) * g.w + ix[:, None, :]
                valid = ((iy >= 0) & (iy < g.h))[:, :, None] & ((ix >= 0) & (ix < g.w))[:, None, :]
                flat = torch.where(valid, flat, g.size).reshape(-1)
                plan.append(((py, px), sel, flat if src.pos is None else src.pos.table()[flat]))
        return plan

    def __call__(self, src: SparseMap, out: Positions) -> torch.Tensor:
        key = ("deconv2x", src.grid, id(src.pos))
        plan = out.memo(key, lambda: (src.pos, self._plan(src, out)))[1]
        res = _new_rows(out.count, self.out_chs, src.rows)
        for parity, sel, rows in plan:
            m = sel.numel()
            cols = src.rows.index_select(0, rows).view(m, 4, self.groups, self.in_g).permute(2, 0, 1, 3)
            y_g = torch.bmm(cols.reshape(self.groups, m, 4 * self.in_g), self.weights[parity])  # G x m x Cout/G
            res[sel] = y_g.permute(1, 0, 2).reshape(m, self.out_chs)
        body = res[:-1]
        body.add_(self.bias)
        if self.relu:
            body.clamp_(min=0)
        return res


# --------------------------------------------------------------------------- folding

def fold_conv_bn(seq: nn.Sequential) -> nn.Conv2d:
    """conv (no bias) -> BN (-> ReLU) Sequential -> one conv with bias (eval statistics)."""
    return fuse_conv_bn(seq[0], seq[1])


def fold_deconv_bn(seq: nn.Sequential) -> nn.ConvTranspose2d:
    """ConvTranspose2d (no bias) -> BN (-> ReLU) -> one transposed conv with bias."""
    deconv, bn = seq[0], seq[1]
    with torch.no_grad():
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = bn.bias.double() - bn.running_mean.double() * scale
        g = deconv.groups
        cin, cout_g = deconv.weight.shape[:2]
        w = deconv.weight.double().view(g, cin // g, cout_g, *deconv.weight.shape[2:])
        w = w * scale.view(g, 1, cout_g, 1, 1)
        fused = nn.ConvTranspose2d(deconv.in_channels, deconv.out_channels, deconv.kernel_size,
                                   deconv.stride, deconv.padding, deconv.output_padding, g, bias=True,
                                   dilation=deconv.dilation, dtype=deconv.weight.dtype,
                                   device=deconv.weight.device)
        fused.weight.copy_(w.view_as(deconv.weight).to(deconv.weight.dtype))
        fused.bias.copy_(bias.to(deconv.weight.dtype))
    return fused.eval()


# --------------------------------------------------------------------------- Stage I executor

class SparseStats(NamedTuple):
    """What the last sparse forward did."""
    active: float         # share of stride-8 cells in the output mask
    cost_fraction: float  # share of the masked part's MACs executed (the dilations included)
    sparse: bool          # False: the masked-dense fallback ran
    mask: torch.Tensor    # N x 1 x H/8 x W/8 float mask that was used


class _SparseBlock:
    def __init__(self, block: nn.Module):
        self.is_first = block.is_first
        self.convs = [SparseConv.from_conv(getattr(block, f"conv{i}")[0], relu=True) for i in range(1, 7)]

    def __call__(self, x: SparseMap, skip: SparseMap | None, p0: Positions, p1: Positions,
                 p2: Positions) -> SparseMap:
        c1, c2, c3, c4, c5, c6 = self.convs
        r1 = c1(x, p2)                                    # 3x3 (maybe strided) on D^2
        r2 = c2.mm(r1[:-1])                               # 1x1 on D^2
        r3 = c3(SparseMap.from_rows(p2, r2), p1)          # 3x3 on D
        r4 = c4.mm(r3[:-1])                               # 1x1 on D
        r5 = c5(SparseMap.from_rows(p1, r4), p0)          # 3x3 on M
        parts = [r1[p2.rows_of(p0)], r3[p1.rows_of(p0)], r5[:-1]]
        if not self.is_first:
            parts.append(skip.gather(p0.idx))
        return SparseMap.from_rows(p0, c6.mm(torch.cat(parts, 1)))

    def run_filled(self, x: SparseMap, skip: SparseMap | None, p0: Positions, fill_mid) -> SparseMap:
        """Every conv on M only; the 3x3 convs read the background's values outside M.

        fill_mid(name, computed SparseMap) -> a whole-grid map: the computed rows over the
        background's rows of that intermediate (the inputs of conv3 and conv5).
        """
        c1, c2, c3, c4, c5, c6 = self.convs
        r1 = c1(x, p0)
        r2 = fill_mid("r2", SparseMap.from_rows(p0, c2.mm(r1[:-1])))
        r3 = c3(r2, p0)
        r4 = fill_mid("r4", SparseMap.from_rows(p0, c4.mm(r3[:-1])))
        r5 = c5(r4, p0)
        parts = [r1[:-1], r3[:-1], r5[:-1]]
        if not self.is_first:
            parts.append(skip.gather(p0.idx))
        return SparseMap.from_rows(p0, c6.mm(torch.cat(parts, 1)))


class _Heads(nn.Module):
    """The Stage I heads with BN folded: modules for the dense passes, and their sparse layers."""

    def __init__(self, net: nn.Module, dtype: torch.dtype | None = None):
        super().__init__()
        for layer in HEAD_GRAPH:
            mod = getattr(net, layer.name)
            if not isinstance(mod, nn.Sequential):  # an output conv: no BN, no ReLU
                setattr(self, layer.name, copy.deepcopy(mod))
            elif isinstance(mod[0], nn.ConvTranspose2d):
                setattr(self, layer.name, nn.Sequential(fold_deconv_bn(mod), nn.ReLU(inplace=True)))
            else:
                setattr(self, layer.name, nn.Sequential(fold_conv_bn(mod), nn.ReLU(inplace=True)))
        if dtype is not None:
            self.to(dtype)
        self.levels = head_levels(self)
        self.sparse = {}
        for layer in HEAD_GRAPH:
            mod = getattr(self, layer.name)
            relu = isinstance(mod, nn.Sequential)
            conv = mod[0] if relu else mod
            self.sparse[layer.name] = (SparseDeconv2x(conv.weight, conv.bias, conv.groups) if layer.kind == "up"
                                       else SparseConv.from_conv(conv, relu=relu))

    def run_sparse(self, f8: SparseMap, f16: SparseMap, q: list[Positions],
                   r16: Positions) -> tuple[torch.Tensor, torch.Tensor]:
        """Each layer on the mask grown by its level (q[level]), so the maps are exact on q[0];
        r16: the stride-16 cells the upsamplings read."""
        out2, enc = run_heads(_SparseOps(self, lambda name: r16 if name in self.stride16 else q[self.levels[name]]),
                              f8, f16)
        return out2.to_dense(), enc.to_dense()

    def run_filled(self, f8: SparseMap, f16: SparseMap, q0: Positions, r16: Positions,
                   fill_mid) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer on q0; fill_mid(name, map) puts the background around the 3x3 convs' inputs."""
        out2, enc = run_heads(_SparseOps(self, lambda name: r16 if name in self.stride16 else q0, fill_mid),
                              f8, f16)
        return out2.to_dense(), enc.to_dense()

    stride16 = frozenset(layer.name for layer in HEAD_GRAPH if layer.grid == 16)


class _SparseOps:
    """`heads.run_heads` ops on compact rows: layer `name` computes the cells `positions(name)`.

    A 3x3 conv reads its input on a superset of its own cells; a 1x1 conv of joined inputs takes
    each input's rows of its cells. fill_mid(name, map), if given, puts the background's values
    around the input of the 3x3 conv `name` (every layer then runs on one set of cells).
    """

    def __init__(self, heads: _Heads, positions, fill_mid=None):
        self.heads, self.positions, self.fill_mid = heads, positions, fill_mid

    def conv(self, name: str, x) -> SparseMap:
        layer, out = self.heads.sparse[name], self.positions(name)
        if isinstance(x, tuple) and layer.kernel == 1:
            return SparseMap.from_rows(out, layer.mm(torch.cat([_rows_on(m, out) for m in x], 1)))
        if isinstance(x, tuple):
            if len({id(m.pos) for m in x}) != 1:
                raise ValueError(f"{name}: joined inputs on different cells")
            x = SparseMap.from_rows(x[0].pos, torch.cat([m.rows for m in x], 1))
        if self.fill_mid is not None and layer.kernel > 1:
            x = self.fill_mid(name, x)
        return SparseMap.from_rows(out, layer(x, out))

    def up(self, name: str, x: SparseMap, like) -> SparseMap:
        out = self.positions(name)
        return SparseMap.from_rows(out, self.heads.sparse[name](x, out))

    @staticmethod
    def cat(*xs: SparseMap) -> tuple[SparseMap, ...]:
        return xs


def _rows_on(m: SparseMap, pos: Positions) -> torch.Tensor:
    """m's rows of the cells `pos` (all of which m holds), without the zero row."""
    return m.rows[:-1] if m.pos is pos else m.rows[m.pos.rows_of(pos)]


class SparseStage1:
    """Eval-mode executor of a `Stage1Net` with DynConv masks, BN folded everywhere.

    Blocks before `first_masked` run dense; the mask (stride 8) comes from the net's mask unit on the
    previous block's output, or from `mask_override`. From there on every block and the heads run
    sparse (or masked-dense when the executed cost share is above `dense_above`). The result
    equals `Stage1Net`'s masked-dense forward with the same mask (eval mode).

    Inactive cells of masked blocks and of the output maps hold 0 (the training semantics), or,
    after `set_background(image)`, what a dense pass computes on that image (an empty view of a
    static scene), at the input of every masked layer: for networks not trained with masks, the
    skipped cells then keep what a dense pass finds there while the background holds (static
    people and objects included), and each layer runs on the mask alone (no dilated rings).

    Build it once per set of weights (`Stage1Net.set_sparse` does); it snapshots the weights, in
    `dtype` if given (bfloat16: the network's layers in bfloat16, its mask unit and the masks in
    float32, the maps returned in bfloat16), else in the network's own.
    """

    def __init__(self, net: nn.Module, first_masked: int, dense_above: float = DENSE_ABOVE,
                 dtype: torch.dtype | None = None):
        self.net = net
        self.first_masked = first_masked
        self.dense_above = dense_above
        self.dtype = dtype or next(net.parameters()).dtype
        self.core = fuse_bn(net.core).to(self.dtype)
        self.heads = _Heads(net, self.dtype).eval()
        self.blocks = [_SparseBlock(b) for b in self.core.features]
        self.stride8_index = self.core.stride8_index
        self.reductions = self.core.cfg.reductions
        self.num_joints = net.cfg.num_joints_2d
        self.last: SparseStats | None = None
        # MACs per output cell of each masked block, for the cost-share estimate
        self._block_macs = [(_macs(b.conv1) + _macs(b.conv2), _macs(b.conv3) + _macs(b.conv4),
                             _macs(b.conv5) + _macs(b.conv6)) for b in self.core.features]
        self._head_cost = head_costs(net, torch.zeros(1, 1, 1, 1))
        # dilations of the mask a plan needs: two inside a block, the heads' depth at stride 8
        self._rings = max(2, len(self._head_cost.terms) - 1)
        self._up_level = max(self.heads.levels[layer.name] for layer in HEAD_GRAPH if layer.kind == "up")
        self._fill: dict[int, torch.Tensor] | None = None  # block -> NCHW background features
        self._fill_rows: dict[tuple[int, int], torch.Tensor] = {}  # (block, batch) -> NHWC rows
        self._fill_out: tuple[torch.Tensor, torch.Tensor] | None = None  # background (maps, enc3d)
        self._backgrounds: OrderedDict[int, tuple] = OrderedDict()  # id(image) -> (image, fills)
        self._filled: dict = {}  # fill key -> (fill rows, their working copy, rows written)

    @torch.no_grad()
    def set_background(self, image: torch.Tensor | None) -> None:
        """Fill inactive cells with the dense features of `image` (1 x 3 x H x W BGR 0..255); None: zeros.

        The features of the last `BACKGROUND_CACHE` image tensors are kept, so streams that take
        turns (a server's clients, each with its own background) switch without a dense pass.
        """
        self._fill, self._fill_rows, self._fill_out = None, {}, None
        if image is None:
            return
        hit = self._backgrounds.get(id(image))
        if hit is not None and hit[0] is image:  # the entry holds the tensor, so its id is not reused
            self._backgrounds.move_to_end(id(image))
            _, self._fill, self._fill_rows, self._fill_out = hit
            return
        feats = [self.core.stem(self.net.normalise(image).to(self.dtype))]
        fill: dict = {}  # every layer's map a 3x3 conv reads, and the block outputs
        for i in range(len(self.blocks)):
            out = self._dense_block(i, feats, mids=fill)
            feats = [out, out] if self.blocks[i].is_first else [out, feats[1]]
        self._fill_out = self._dense_heads(fill[self.stride8_index], feats[0], mids=fill)
        for key, f in fill.items():  # kept once, as the sparse path's rows; NCHW is a view of them
            n, c, h, w = f.shape
            rows = self._fill_rows[key, n] = SparseMap.from_dense(f).rows
            fill[key] = rows[:-1].view(n, h, w, c).permute(0, 3, 1, 2)
        self._fill = fill
        self._backgrounds[id(image)] = (image, self._fill, self._fill_rows, self._fill_out)
        while len(self._backgrounds) > BACKGROUND_CACHE:
            self._backgrounds.popitem(last=False)

    def _fill_for(self, i, ref: torch.Tensor) -> torch.Tensor | None:
        if self._fill is None:
            return None
        f = self._fill[i]
        if f.shape[1:] != ref.shape[1:] or f.shape[0] not in (1, ref.shape[0]):
            raise ValueError(f"background features {tuple(f.shape)} do not fit the block output "
                             f"{tuple(ref.shape)}: give a background image of the input's size")
        return f

    def _fill_rows_for(self, i, grid: Grid, channels: int) -> torch.Tensor | None:
        if self._fill is None:
            return None
        key = (i, grid.n)
        if key not in self._fill_rows:
            f = self._fill[i]
            ref = torch.empty(grid.n, channels, grid.h, grid.w, device=f.device, dtype=f.dtype)
            f = self._fill_for(i, ref)
            self._fill_rows[key] = SparseMap.from_dense(f.expand_as(ref)).rows
        return self._fill_rows[key]

    def _over_fill(self, i, fill: torch.Tensor, x: SparseMap) -> SparseMap:
        """Layer i's computed rows written over its background rows, as a dense map.

        The result lives in a buffer kept per layer: the next frame puts back the background
        rows of the cells the last one wrote and this one does not, instead of copying the whole
        map again.
        """
        held = self._filled.get(i)
        if held is None or held[0] is not fill or _written_outside_inference_mode(held[1]):
            held = (fill, fill.clone(), None)
        _, rows, written = held
        if written is not None:  # layers of one level share their Positions, so one set difference each
            stale = x.pos.memo(("stale", id(written)),
                               lambda: (written, written[~torch.isin(written, x.pos.idx)]))[1]
            if stale.numel():
                rows.index_copy_(0, stale, fill.index_select(0, stale))
        rows.index_copy_(0, x.pos.idx, x.rows[:-1])
        self._filled[i] = (fill, rows, x.pos.idx)
        return SparseMap(x.grid, rows, None)

    # -- planning ---------------------------------------------------------------------------------
    def _plan(self, m8: torch.Tensor, hw: tuple[int, int]) -> tuple[dict, float]:
        """Position sets of every level and the executed share of the masked MACs."""
        levels = {}
        for r in sorted(set(self.reductions[self.first_masked:]) | {8}):
            d = [mask_at(m8, r, hw)]
            for _ in range(self._rings):
                d.append(dilate(d[-1]))
            levels[r] = d
        used = total = 0.0
        for i in range(self.first_masked, len(self.blocks)):
            d = levels[self.reductions[i]]
            if self._fill is not None:  # per-layer background fill: every layer on M
                d = [d[0]] * 3
            f2, f1, f0 = self._block_macs[i]
            used += float(d[2].sum()) * f2 + float(d[1].sum()) * f1 + float(d[0].sum()) * f0
            total += d[0].numel() * (f2 + f1 + f0)
        depth = len(self._head_cost.terms) - 1
        d8 = levels[8] if self._fill is None else [levels[8][0]] * (depth + 1)
        for (_, f), m in zip(self._head_cost.terms, d8[depth::-1]):
            used += float(m.sum()) * f
            total += m.numel() * f
        return levels, used / max(total, 1.0)

    # -- forward -------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, x: torch.Tensor, mask_override: torch.Tensor | None = None):
        """BGR 0..255 input (N x 3 x H x W) -> (heatmaps, pafs, enc3d)."""
        feats = [self.core.stem(self.net.normalise(x).to(self.dtype))]
        f8 = None  # the stride-8 tap when it comes before the first masked block
        for i in range(self.first_masked):
            feats = self.core.features[i](feats)
            if i == self.stride8_index:
                f8 = feats[0]
        h8, w8 = (x.shape[-2] + 7) // 8, (x.shape[-1] + 7) // 8
        if mask_override is not None:
            m8 = as_mask(mask_override, x.shape[0], h8, w8)
        else:
            m8 = hard_mask(self.net.mask_unit(feats[0].float()), self.net.dynconv_max_active, self.net.dynconv_grow)
        levels, cost = self._plan(m8, tuple(x.shape[-2:]))
        aligned = x.shape[-2] % 16 == 0 and x.shape[-1] % 16 == 0
        use_sparse = aligned and cost <= self.dense_above
        if use_sparse:
            out2, enc = self._sparse(feats, f8, levels)
        else:
            out2, enc = self._masked_dense(feats, f8, {k: [m.to(self.dtype) for m in v] for k, v in levels.items()})
        if self._fill_out is not None:
            bg2, bg3 = self._fill_out  # its size was checked with the block fills
            off = 1 - levels[8][0]
            out2, enc = out2 + bg2 * off, enc + bg3 * off
        self.last = SparseStats(float(m8.mean()), cost, use_sparse, m8)
        j = self.num_joints
        return out2[:, :j], out2[:, j:], enc

    def _masked_dense(self, feats: list[torch.Tensor], f8: torch.Tensor | None,
                      levels: dict) -> tuple[torch.Tensor, torch.Tensor]:
        for i in range(self.first_masked, len(self.blocks)):
            m = levels[self.reductions[i]][0]
            if self._fill is None:
                out = self.core.features[i](feats)[0] * m
            else:
                out = self._dense_block(i, feats, over=lambda key, v, m=m: self._masked(key, v, m))
            feats = [out, out] if self.blocks[i].is_first else [out, feats[1]]
            if i == self.stride8_index:
                f8 = out
        m8 = levels[8][0]
        if self._fill is None:
            out2, enc = self._dense_heads(f8, feats[0])
        else:
            out2, enc = self._dense_heads(f8, feats[0], over=lambda key, v: self._masked(key, v, m8))
        return out2 * m8, enc * m8

    def _masked(self, key, value: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """value on the mask, the background's `key` map elsewhere."""
        return value * m + self._fill_for(key, value) * (1 - m)

    def _dense_block(self, i: int, feats: list[torch.Tensor], mids: dict | None = None,
                     over=None) -> torch.Tensor:
        """Block i's output, dense (the block's own forward, with taps: see `_tap`). Keys: (i, "r2")
        and (i, "r4"), the inputs of conv3 and conv5, and i, the output."""
        b, tap = self.core.features[i], _tap(mids, over)
        d1 = b.conv1(feats[0])
        d2 = b.conv3(tap((i, "r2"), b.conv2(d1)))
        d3 = b.conv5(tap((i, "r4"), b.conv4(d2)))
        parts = [d1, d2, d3] if b.is_first else [d1, d2, d3, feats[1]]
        return tap(i, b.conv6(torch.cat(parts, 1)))

    def _dense_heads(self, f8: torch.Tensor, f16: torch.Tensor, mids: dict | None = None,
                     over=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads, dense, with taps (`_tap`) on the inputs of their 3x3 convs, keyed ("heads", name)."""
        tap = _tap(mids, over)
        return run_heads(ModuleOps(self.heads, lambda name, x: tap(("heads", name), x)), f8, f16)

    def _sparse(self, feats: list[torch.Tensor], f8_dense: torch.Tensor | None,
                levels: dict) -> tuple[torch.Tensor, torch.Tensor]:
        pos = {k: [Positions.from_mask(m) for m in v] for k, v in levels.items()}
        x = SparseMap.from_dense(feats[0])
        skip = SparseMap.from_dense(feats[1]) if len(feats) > 1 and feats[1] is not feats[0] else x
        f8 = None if f8_dense is None else SparseMap.from_dense(f8_dense)
        for i in range(self.first_masked, len(self.blocks)):
            p = pos[self.reductions[i]]
            if self._fill is not None:
                x = self.blocks[i].run_filled(x, skip, p[0], lambda name, m, i=i: self._over_mid((i, name), m))
            else:
                x = self.blocks[i](x, skip, p[0], p[1], p[2])
            if self._fill is not None:
                x = self._over_mid(i, x)
            if self.blocks[i].is_first:
                skip = x
            if i == self.stride8_index:
                f8 = x
        if self._fill is not None:
            r16 = Positions.from_mask(dilate(downsample_mask(levels[8][0])))
            return self.heads.run_filled(f8, x, pos[8][0], r16, lambda name, m: self._over_mid(("heads", name), m))
        r16 = Positions.from_mask(dilate(downsample_mask(levels[8][self._up_level])))
        return self.heads.run_sparse(f8, x, pos[8], r16)

    def _over_mid(self, key, m: SparseMap) -> SparseMap:
        """A layer's computed rows over the background's rows of that layer (whole grid)."""
        return self._over_fill(key, self._fill_rows_for(key, m.grid, m.channels), m)


def _tap(mids: dict | None, over):
    """tap(key, map) for the dense reference passes: records the map in `mids`, and returns
    `over(key, map)` when given (the background off the mask) or the map itself."""
    def tap(key, value: torch.Tensor) -> torch.Tensor:
        if mids is not None:
            mids[key] = value
        return value if over is None else over(key, value)
    return tap


def as_mask(mask: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """An override mask ([H, W], [N, H, W] or [N, 1, H, W]; bool or float) -> N x 1 x H x W float."""
    m = torch.as_tensor(mask)
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[-2:] != (h, w) or m.shape[0] not in (1, n):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit the stride-8 grid "
                         f"{n} x 1 x {h} x {w}")
    m = (m > 0).float()
    return m.expand(n, 1, h, w).contiguous() if m.shape[0] != n else m
