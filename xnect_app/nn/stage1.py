"""XNect Stage I: SelecSLS core + 2D branch (heatmaps, PAFs) + 3D branch (pose encodings).

Branch widths follow the public re-implementation described in spec §2.4, with two changes:
the output layers are plain convolutions with bias (heatmaps, PAFs and 3D encodings are signed
or unbounded, so no BN/ReLU on them), and the 2D branch also takes the backbone's stride-8 map
through a 1x1 projection, which helps the small people of surveillance-like scenes.

Input: BGR images as float 0..255, N x 3 x H x W (H, W multiples of 16). Normalisation to the
ImageNet statistics happens inside, so exported models and callers share one convention.
Output: `Stage1Output` maps at stride 8.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from .. import skeleton
from . import dynconv, selecsls
from .._moved import moved_names
from .heads import ModuleOps, head_layers, run_heads

STRIDE = 8
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

__getattr__ = moved_names(__name__, {"conv_bn_relu": "xnect_app.nn.heads", "deconv_bn_relu": "xnect_app.nn.heads"})


class Stage1Output(NamedTuple):
    heatmaps: torch.Tensor  # N x 19 x H/8 x W/8
    pafs: torch.Tensor      # N x 36 x H/8 x W/8
    enc3d: torch.Tensor     # N x 63 x H/8 x W/8, root-relative metres


@dataclass(frozen=True)
class Stage1Config:
    backbone: str = "selecsls60"
    num_joints_2d: int = skeleton.NUM_JOINTS_2D
    num_pafs: int = skeleton.NUM_PAF_CHANNELS
    num_enc3d: int = 3 * skeleton.NUM_JOINTS_3D
    widths_2d: tuple[int, ...] = field(default=(256, 192, 128, 96))
    widths_3d: tuple[int, ...] = field(default=(256, 192, 160, 160, 128))
    skip8_chs: int = 64
    # DynConv (xnect_app/nn/dynconv.py): a mask unit on the output of block `dynconv_from - 1`
    # gates every later block and the heads; off = the plain dense network, unchanged.
    dynconv: bool = False
    dynconv_budget: float = 0.25  # target share of the masked MACs (sparsity loss)
    dynconv_from: int = 2         # first masked SelecSLS block
    dynconv_hidden: int = 32      # channels of the mask unit's context tower (0: one 3x3 conv)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "Stage1Config":
        d = dict(d)
        for k in ("widths_2d", "widths_3d"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class Stage1Net(nn.Module):
    def __init__(self, cfg: Stage1Config = Stage1Config()):
        super().__init__()
        self.cfg = cfg
        self.core = selecsls.build(cfg.backbone, features_only=True)
        c8, c16 = self._tap_channels()
        for name, layer in head_layers(cfg, c8, c16):
            self.add_module(name, layer)
        self.register_buffer("mean", torch.tensor([m * 255 for m in IMAGENET_MEAN_RGB[::-1]]).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor([s * 255 for s in IMAGENET_STD_RGB[::-1]]).view(1, 3, 1, 1),
                             persistent=False)
        self._init_heads()
        self._init_dynconv()

    def _tap_channels(self) -> tuple[int, int]:
        info = {f["reduction"]: f["num_chs"] for f in self.core.feature_info}
        return info[8], info[16]

    def _init_heads(self) -> None:
        for m in self.modules():
            if m is self.core or any(m is c for c in self.core.modules()):
                continue
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for out in (self.b2d_out, self.b3d_out):
            nn.init.normal_(out.weight, std=0.001)
            nn.init.zeros_(out.bias)

    def _init_dynconv(self) -> None:
        # Plain attributes only: nothing here enters the state dict unless cfg.dynconv is on.
        self.dynconv_tau = 1.0       # Gumbel temperature (training)
        self.dynconv_noise = True    # Gumbel noise on (training; the trainer turns it off late)
        self.dynconv_max_active: float | None = None  # inference cap on the active share (dynconv.hard_mask)
        # Inference masks grow by this many cells around the mask unit's. On coco_dev with the
        # session-13 weights (dense body AP 0.146, PCK 0.543): grow 1 -> 0.130 / 0.492 at 46% of
        # the cells, 2 -> 0.134 / 0.507 at 53%, 3 -> 0.135 / 0.526 at 59%.
        self.dynconv_grow = 2
        self.dynconv_costs: list[dynconv.LayerCost] = []  # from the last masked forward
        self.last_mask: torch.Tensor | None = None         # N x 1 x H/8 x W/8, last masked forward
        self._sparse_on = False
        self._use_mask_unit = False  # eval without set_sparse: the dense network
        self._sparse_exec: dynconv.SparseStage1 | None = None
        self._mask_override: torch.Tensor | None = None
        self._dense_above = dynconv.DENSE_ABOVE
        self._background: torch.Tensor | None = None
        self._first_masked = self.cfg.dynconv_from
        # Dense inference without autograd runs a snapshot with BN folded in NHWC layout (about
        # 1.25x faster on CPU, same maps to float rounding); off: the modules as they are.
        self.fast_dense = True
        self._fast_exec: Stage1Net | None = None
        # Inference without autograd on the CPU in bfloat16 (dense: autocast; sparse DynConv: its
        # layers in bfloat16): about 1.9x faster where the CPU has bfloat16 instructions (avx512_bf16,
        # AMX), the same coco_dev AP; maps come back as float32. Set by the runtime (ModelConfig.precision).
        self.bf16_inference = False
        self.register_load_state_dict_post_hook(_drop_sparse_executor)
        if not self.cfg.dynconv:
            return
        first = self.cfg.dynconv_from
        red = self.core.cfg.reductions
        if not 1 <= first < len(red) or red[first - 1] not in (4, 8):
            raise ValueError(f"dynconv_from={first}: the mask unit must read a stride-4 or stride-8 "
                             f"block output (block output strides {red})")
        tap = self.core.cfg.blocks[first - 1].out_chs
        self.mask_unit = dynconv.MaskUnit(tap, stride=8 // red[first - 1], hidden=self.cfg.dynconv_hidden)

    @property
    def first_masked_block(self) -> int:
        return self._first_masked

    def set_sparse(self, enabled: bool = True, mask_override: torch.Tensor | None = None,
                   dense_above: float | None = None,
                   background: torch.Tensor | None | bool = False,
                   first_block: int | None = None, mask_unit: bool = False) -> "Stage1Net":
        """Switch DynConv sparse execution (eval mode, CPU) on or off.

        Args:
            enabled: run blocks from `cfg.dynconv_from` on and the heads only on active cells.
            mask_override: stride-8 mask ([H/8, W/8], [N, H/8, W/8] or [N, 1, H/8, W/8]) used
                instead of the mask unit (e.g. an oracle motion mask); with it, a network built
                without `dynconv` runs masked too, and the masked-dense path (enabled=False) uses it.
            dense_above: cost share above which the masked-dense fallback runs (default
                `dynconv.DENSE_ABOVE`).
            background: an image of the empty scene (1 x 3 x H x W, BGR 0..255): cells off the
                mask get what a dense pass computes on it, at the input of every masked layer and
                in the output maps, not zeros (the sparse executor and its dense fallback; for
                networks not trained with DynConv, on a static camera; every layer then runs on
                the mask alone); None clears it, False keeps it.
            first_block: first masked SelecSLS block when the mask is `mask_override` (default
                `cfg.dynconv_from`; earlier = more of the network sparse).
            mask_unit: with enabled=False and no mask_override, True runs masked-dense with the
                unit's own mask (zero fill, every cell computed: the reference of the sparse path);
                False (default) the whole network dense. Training always uses the mask unit.
        The executor snapshots the weights (BN folded); `train()`, `eval()` and `load_state_dict`
        drop it, and it is rebuilt on the next sparse forward.
        """
        if enabled and not self.cfg.dynconv and mask_override is None:
            raise ValueError("sparse execution needs a mask: build the network with "
                             "Stage1Config(dynconv=True) or pass mask_override")
        first = self.cfg.dynconv_from if first_block is None else int(first_block)
        if first != self.cfg.dynconv_from:
            if mask_override is None:
                raise ValueError("first_block needs mask_override: the mask unit reads the output "
                                 f"of block {self.cfg.dynconv_from - 1}")
            if not 0 <= first < len(self.core.features):
                raise ValueError(f"first_block must be in 0..{len(self.core.features) - 1}")
        self._first_masked = first
        self._sparse_on = bool(enabled)
        self._use_mask_unit = bool(mask_unit) or bool(enabled)
        self._mask_override = mask_override
        if dense_above is not None:
            self._dense_above = float(dense_above)
            if self._sparse_exec is not None:
                self._sparse_exec.dense_above = self._dense_above
        if background is not False and background is not self._background:
            self._background = background
            if self._sparse_exec is not None:
                self._sparse_exec.set_background(background)
        return self

    @property
    def sparse_stats(self) -> "dynconv.SparseStats | None":
        """Active share, executed cost share, sparse-or-fallback and mask of the last sparse forward."""
        return None if self._sparse_exec is None else self._sparse_exec.last

    def train(self, mode: bool = True) -> "Stage1Net":
        self._sparse_exec = None
        self._fast_exec = None
        return super().train(mode)

    def fused(self) -> "Stage1Net":
        """An eval-mode copy with every BN folded into its conv (this network is unchanged)."""
        snapshots = self._sparse_exec, self._fast_exec
        self._sparse_exec = self._fast_exec = None
        try:
            out = copy.deepcopy(self)
        finally:
            self._sparse_exec, self._fast_exec = snapshots
        out.fast_dense = False
        for m in out.modules():  # hooks on this network fire once, from its own forward
            for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
                hooks.clear()
        out.core = selecsls.fuse_bn(out.core)
        for name, mod in list(out.named_children()):
            if not (isinstance(mod, nn.Sequential) and len(mod) == 3 and isinstance(mod[1], nn.BatchNorm2d)):
                continue
            if isinstance(mod[0], nn.ConvTranspose2d):
                setattr(out, name, nn.Sequential(dynconv.fold_deconv_bn(mod), nn.Identity(), mod[2]))
            elif isinstance(mod[0], nn.Conv2d):
                setattr(out, name, nn.Sequential(selecsls.fuse_conv_bn(mod[0], mod[1]), nn.Identity(), mod[2]))
        return out.eval()

    def _use_fast_exec(self, x: torch.Tensor) -> bool:
        return (self.fast_dense and not self.training and not torch.is_grad_enabled()
                and x.device.type == "cpu" and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export())

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        # BGR 0..255 -> ImageNet-normalised BGR order (the channel order the core was built for
        # is irrelevant when training from scratch; ImageNet weights expect RGB, handled by the
        # loader flipping the stem's input channels).
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> Stage1Output:
        if (self.cfg.dynconv and (self._use_mask_unit or self.training)) or self._mask_override is not None:
            if self._sparse_on and not self.training:
                dtype = torch.bfloat16 if self.bf16_inference else self.mean.dtype
                if self._sparse_exec is None or self._sparse_exec.dtype != dtype:
                    self._sparse_exec = dynconv.SparseStage1(self, self.cfg.dynconv_from, self._dense_above, dtype)
                    self._sparse_exec.set_background(self._background)
                self._sparse_exec.first_masked = self._first_masked
                return Stage1Output(*(t.to(x.dtype) for t in self._sparse_exec(x, self._mask_override)))
            return self._forward_masked(x)
        if self._use_fast_exec(x):
            if self._fast_exec is None:  # a plain attribute: never a submodule, never in the state dict
                object.__setattr__(self, "_fast_exec", self.fused().to(memory_format=torch.channels_last))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16_inference):
                out = self._fast_exec(x.contiguous(memory_format=torch.channels_last))
            return Stage1Output(*(t.to(x.dtype).contiguous() for t in out))
        feats = self.core(self.normalise(x))
        out2, enc = run_heads(ModuleOps(self), feats.stride8, feats.stride16)
        j = self.cfg.num_joints_2d
        return Stage1Output(out2[:, :j], out2[:, j:], enc)

    def _dynconv_mask(self, tap: torch.Tensor, h8: int, w8: int) -> torch.Tensor:
        if self._mask_override is not None:
            return dynconv.as_mask(self._mask_override, tap.shape[0], h8, w8).to(tap)
        logits = self.mask_unit(tap)
        if self.training:
            return dynconv.gumbel_mask(logits, self.dynconv_tau, self.dynconv_noise)
        return dynconv.hard_mask(logits, self.dynconv_max_active, self.dynconv_grow)

    def mask_tap(self, x: torch.Tensor) -> torch.Tensor:
        """The features the mask unit reads (the output of the block before `cfg.dynconv_from`)."""
        feats = [self.core.stem(self.normalise(x))]
        for block in self.core.features[:self.cfg.dynconv_from]:
            feats = block(feats)
        return feats[0]

    def _forward_masked(self, x: torch.Tensor) -> Stage1Output:
        """Masked-dense DynConv forward (training, and the reference of the sparse path).

        Masked blocks output block(x) * mask (zero fill); the heads' maps are zero off the mask.
        Records `dynconv_costs` for `dynconv.sparsity_loss` and `last_mask`.
        """
        core = self.core
        feats = [core.stem(self.normalise(x))]
        h8, w8 = (x.shape[-2] + 7) // 8, (x.shape[-1] + 7) // 8
        m8 = f8 = None
        costs = []
        for i, block in enumerate(core.features):
            if i == self._first_masked:
                m8 = self._dynconv_mask(feats[0], h8, w8)
            feats = block(feats)
            if m8 is not None:
                m = dynconv.mask_at(m8, core.cfg.reductions[i], x.shape[-2:])
                costs.append(dynconv.block_costs(f"features.{i}", block, m))
                out = feats[0] * m
                feats = [out, out] if block.is_first else [out, feats[1]]
            if i == core.stride8_index:
                f8 = feats[0]
        out2, enc = run_heads(ModuleOps(self), f8, feats[0])
        out2, enc = out2 * m8, enc * m8
        costs.append(dynconv.head_costs(self, m8))
        self.dynconv_costs = costs
        self.last_mask = m8.detach()
        j = self.cfg.num_joints_2d
        return Stage1Output(out2[:, :j], out2[:, j:], enc)


def _drop_sparse_executor(module: Stage1Net, incompatible_keys) -> None:
    module._sparse_exec = None  # new weights: the folded snapshots are stale
    module._fast_exec = None


def load_backbone_imagenet(net: Stage1Net, path: str) -> None:
    """Initialise the core from an official or timm SelecSLS ImageNet state dict.

    ImageNet weights expect RGB input; our network takes BGR, so the stem's input channels are
    reversed once here.
    """
    sd = dict(selecsls._unwrap(selecsls._read_checkpoint(path)))
    key = "stem.0.weight"
    if key in sd:
        sd[key] = sd[key].flip(1)
    selecsls.load_checkpoint(net.core, sd)
