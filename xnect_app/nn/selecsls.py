"""SelecSLS Net: the XNect backbone family (42, 42_B, 60, 60_B, 84).

Paper: Mehta et al., "XNect: Real-time Multi-Person 3D Motion Capture with a Single RGB Camera",
ACM TOG 39(4), 2020 (arXiv 1907.00837). Reference implementations: mehtadushy/SelecSLS-Pytorch
and timm's `models/selecsls.py`; this file is written from the layer tables in the project's
design spec (xnect-spec.md §1), not copied from either.

What lives here:
- `SELECSLS_CONFIGS`: the variants as data (frozen configs of block and head tuples).
- `SelecSls`: conv+BN+ReLU network in the official/timm key layout (`stem.0/1`,
  `features.{i}.conv{n}.{0,1}`, `head.{j}.{0,1}`, `classifier.0`). With `features_only=True` it is
  the XNect "core" (stem + features) returning the stride-8 and stride-16 maps.
- `load_checkpoint`: official (`classifier.0.*`) and timm (`fc.*`) checkpoints, with clear
  `CheckpointError`s.
- `fuse_bn` / `prune`: BN fusion and implicit-sparsity channel pruning (spec §1.8-1.9) into a
  separate `FusedSelecSls` (convs with bias, no BN). Neither touches the source model.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

__all__ = [
    "BlockArgs", "HeadArgs", "SelecSlsCfg", "SELECSLS_CONFIGS", "resolve_name",
    "SelecSlsFeatures", "SelecSlsBlock", "SelecSls", "FusedSelecSlsBlock", "FusedSelecSls",
    "PrunedWidths", "build", "CheckpointError", "CheckpointReport", "checkpoint_filter_fn",
    "load_checkpoint", "fuse_conv_bn", "fuse_bn", "prune",
]

_logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- configurations

class BlockArgs(NamedTuple):
    in_chs: int
    skip_chs: int
    mid_chs: int
    out_chs: int
    is_first: bool
    stride: int


class HeadArgs(NamedTuple):
    in_chs: int
    out_chs: int
    kernel: int
    stride: int


@dataclass(frozen=True)
class SelecSlsCfg:
    name: str
    blocks: tuple[BlockArgs, ...]
    head: tuple[HeadArgs, ...]
    stem_chs: int = 32

    @property
    def num_features(self) -> int:
        return self.head[-1].out_chs

    @property
    def core_chs(self) -> int:
        return self.blocks[-1].out_chs

    @property
    def reductions(self) -> tuple[int, ...]:
        """Output stride of each block (the stem halves the input)."""
        out, r = [], 2
        for b in self.blocks:
            r *= b.stride
            out.append(r)
        return tuple(out)

    def last_block_at(self, reduction: int) -> int:
        """Index of the last block whose output is at `reduction`."""
        return max(i for i, r in enumerate(self.reductions) if r == reduction)

    @property
    def stride8_index(self) -> int:
        return self.last_block_at(8)


def _blocks(*rows) -> tuple[BlockArgs, ...]:
    return tuple(BlockArgs(*r) for r in rows)


def _head(*rows) -> tuple[HeadArgs, ...]:
    return tuple(HeadArgs(*r) for r in rows)


# Block columns: in_chs, skip_chs, mid_chs, out_chs, is_first, stride (spec §1.4).
_FEATURES_42 = _blocks(
    (32, 0, 64, 64, True, 2),
    (64, 64, 64, 128, False, 1),
    (128, 0, 144, 144, True, 2),
    (144, 144, 144, 288, False, 1),
    (288, 0, 304, 304, True, 2),
    (304, 304, 304, 480, False, 1),
)
_FEATURES_60 = _blocks(
    (32, 0, 64, 64, True, 2),
    (64, 64, 64, 128, False, 1),
    (128, 0, 128, 128, True, 2),
    (128, 128, 128, 128, False, 1),
    (128, 128, 128, 288, False, 1),
    (288, 0, 288, 288, True, 2),
    (288, 288, 288, 288, False, 1),
    (288, 288, 288, 288, False, 1),
    (288, 288, 288, 416, False, 1),
)
_FEATURES_84 = _blocks(
    (32, 0, 64, 64, True, 2),
    (64, 64, 64, 144, False, 1),
    (144, 0, 144, 144, True, 2),
    *[(144, 144, 144, 144, False, 1)] * 3,
    (144, 144, 144, 304, False, 1),
    (304, 0, 304, 304, True, 2),
    *[(304, 304, 304, 304, False, 1)] * 4,
    (304, 304, 304, 512, False, 1),
)
# Head columns: in_chs, out_chs, kernel, stride (spec §1.5).
_HEAD_42 = _head((480, 960, 3, 2), (960, 1024, 3, 1), (1024, 1024, 3, 2), (1024, 1280, 1, 1))
_HEAD_42B = _head((480, 960, 3, 2), (960, 1024, 3, 1), (1024, 1280, 3, 2), (1280, 1024, 1, 1))
_HEAD_60 = _head((416, 756, 3, 2), (756, 1024, 3, 1), (1024, 1024, 3, 2), (1024, 1280, 1, 1))
_HEAD_60B = _head((416, 756, 3, 2), (756, 1024, 3, 1), (1024, 1280, 3, 2), (1280, 1024, 1, 1))
_HEAD_84 = _head((512, 960, 3, 2), (960, 1024, 3, 1), (1024, 1024, 3, 2), (1024, 1280, 1, 1))
_HEAD_84_TIMM = _HEAD_84[:3] + _head((1024, 1280, 3, 1))

SELECSLS_CONFIGS: dict[str, SelecSlsCfg] = {
    cfg.name: cfg for cfg in (
        SelecSlsCfg("selecsls42", _FEATURES_42, _HEAD_42),
        SelecSlsCfg("selecsls42b", _FEATURES_42, _HEAD_42B),
        SelecSlsCfg("selecsls60", _FEATURES_60, _HEAD_60),
        SelecSlsCfg("selecsls60b", _FEATURES_60, _HEAD_60B),
        SelecSlsCfg("selecsls84", _FEATURES_84, _HEAD_84),            # official 1x1 head.3
        SelecSlsCfg("selecsls84_timm", _FEATURES_84, _HEAD_84_TIMM),  # timm's 3x3 head.3
    )
}


def resolve_name(name: str) -> str:
    """Canonical config name; case, '_' and '-' are ignored ("SelecSLS42_B" -> "selecsls42b")."""
    key = str(name).lower().replace("_", "").replace("-", "")
    if not key.startswith("selecsls"):
        key = "selecsls" + key
    for canonical in SELECSLS_CONFIGS:
        if canonical.replace("_", "") == key:
            return canonical
    raise KeyError(f"unknown SelecSLS variant {name!r}; valid names: {', '.join(SELECSLS_CONFIGS)}")


# --------------------------------------------------------------------------- layers and blocks

def conv_bn(in_chs: int, out_chs: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """conv (no bias) -> BN -> ReLU; padding keeps 'same' size at stride 1 (spec §1.1)."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


def conv_relu(in_chs: int, out_chs: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """conv with bias -> ReLU: a conv_bn after BN fusion."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel, stride, padding=kernel // 2, bias=True),
        nn.ReLU(inplace=True),
    )


class SelecSlsFeatures(NamedTuple):
    stride8: torch.Tensor
    stride16: torch.Tensor


class _BlockBase(nn.Module):
    """Forward shared by the BN and fused blocks: x = [running map, stage skip] (spec §1.2)."""

    is_first: bool

    def forward(self, x: list[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        if isinstance(x, torch.Tensor):
            x = [x]
        d1 = self.conv1(x[0])
        d2 = self.conv3(self.conv2(d1))
        d3 = self.conv5(self.conv4(d2))
        if self.is_first:
            out = self.conv6(torch.cat([d1, d2, d3], 1))
            return [out, out]  # a stage-first output is the skip for the rest of the stage
        return [self.conv6(torch.cat([d1, d2, d3, x[1]], 1)), x[1]]


class SelecSlsBlock(_BlockBase):
    def __init__(self, in_chs: int, skip_chs: int, mid_chs: int, out_chs: int,
                 is_first: bool, stride: int):
        super().__init__()
        self.is_first = is_first
        self.conv1 = conv_bn(in_chs, mid_chs, 3, stride)
        self.conv2 = conv_bn(mid_chs, mid_chs, 1)
        self.conv3 = conv_bn(mid_chs, mid_chs // 2, 3)
        self.conv4 = conv_bn(mid_chs // 2, mid_chs, 1)
        self.conv5 = conv_bn(mid_chs, mid_chs // 2, 3)
        self.conv6 = conv_bn(2 * mid_chs + (0 if is_first else skip_chs), out_chs, 1)


class FusedSelecSlsBlock(_BlockBase):
    """Block of a fused/pruned model; widths = outputs of conv1..conv6 (a, b, c, d, e, o)."""

    def __init__(self, in_chs: int, skip_chs: int, widths: tuple[int, ...], is_first: bool,
                 stride: int):
        super().__init__()
        a, b, c, d, e, o = widths
        self.is_first = is_first
        self.conv1 = conv_relu(in_chs, a, 3, stride)
        self.conv2 = conv_relu(a, b, 1)
        self.conv3 = conv_relu(b, c, 3)
        self.conv4 = conv_relu(c, d, 1)
        self.conv5 = conv_relu(d, e, 3)
        self.conv6 = conv_relu(a + c + e + (0 if is_first else skip_chs), o, 1)


# --------------------------------------------------------------------------- models

def _feature_info(cfg: SelecSlsCfg, features_only: bool) -> list[dict]:
    """timm-style taps. features_only: exactly the two maps forward() returns, in order."""
    stride8 = dict(num_chs=cfg.blocks[cfg.stride8_index].out_chs, reduction=8,
                   module=f"features.{cfg.stride8_index}")
    stride16 = dict(num_chs=cfg.core_chs, reduction=16, module=f"features.{len(cfg.blocks) - 1}")
    if features_only:
        return [stride8, stride16]
    stride4 = cfg.last_block_at(4)
    return [
        dict(num_chs=cfg.stem_chs, reduction=2, module="stem.2"),
        dict(num_chs=cfg.blocks[stride4].out_chs, reduction=4, module=f"features.{stride4}"),
        stride8, stride16,
        dict(num_chs=cfg.head[1].out_chs, reduction=32, module="head.1"),
        dict(num_chs=cfg.head[3].out_chs, reduction=64, module="head.3"),
    ]


class _SelecSlsBase(nn.Module):
    """Forward passes shared by `SelecSls` and `FusedSelecSls`."""

    def _init_common(self, cfg: SelecSlsCfg, num_classes: int, features_only: bool) -> None:
        self.cfg = cfg
        self.features_only = features_only
        self.num_classes = 0 if features_only else num_classes
        self.stride8_index = cfg.stride8_index
        self.feature_info = _feature_info(cfg, features_only)

    def forward_core(self, x: torch.Tensor) -> SelecSlsFeatures:
        """Stem + features -> stride-8 and stride-16 maps."""
        feats = [self.stem(x)]
        stride8 = None
        for i, block in enumerate(self.features):
            feats = block(feats)
            if i == self.stride8_index:
                stride8 = feats[0]
        return SelecSlsFeatures(stride8, feats[0])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Stride-16 map -> head -> global average pool -> classifier (if any)."""
        x = self.head(x).mean((2, 3))
        if pre_logits or self.classifier is None:
            return x
        return self.classifier(x)

    def forward(self, x: torch.Tensor):
        core = self.forward_core(x)
        if self.features_only:
            return core
        return self.forward_head(core.stride16)


class SelecSls(_SelecSlsBase):
    """SelecSLS network.

    Args:
        cfg: variant config (see `SELECSLS_CONFIGS`).
        num_classes: classifier outputs; 0 -> forward returns the pooled head features.
        features_only: build only the core (stem + features); forward returns `SelecSlsFeatures`.
    """

    def __init__(self, cfg: SelecSlsCfg, num_classes: int = 1000, features_only: bool = False):
        super().__init__()
        self._init_common(cfg, num_classes, features_only)
        self.stem = conv_bn(3, cfg.stem_chs, 3, 2)
        self.features = nn.Sequential(*[SelecSlsBlock(*b) for b in cfg.blocks])
        self.head = None
        self.classifier = None
        if not features_only:
            self.head = nn.Sequential(*[conv_bn(*h) for h in cfg.head])
            self.num_features = cfg.num_features
            if num_classes > 0:
                self.classifier = nn.Sequential(nn.Linear(cfg.num_features, num_classes))
        else:
            self.num_features = cfg.core_chs
        for m in self.modules():  # timm init; BN and Linear keep PyTorch defaults
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class PrunedWidths(NamedTuple):
    """Channel widths of a fused/pruned model: enough to rebuild it and load its state dict."""
    stem: int
    blocks: tuple[tuple[int, int, int, int, int, int], ...]  # conv1..conv6 outputs per block
    head: tuple[int, ...]                                  # head layer outputs ('()' if none)


class FusedSelecSls(_SelecSlsBase):
    """BN-fused (and possibly pruned) SelecSLS: every layer is conv-with-bias -> ReLU.

    Built by `fuse_bn` / `prune`; rebuild one from `model.widths` to load a saved state dict.
    """

    def __init__(self, cfg: SelecSlsCfg, widths: PrunedWidths, num_classes: int = 1000,
                 features_only: bool = False):
        super().__init__()
        self._init_common(cfg, num_classes, features_only)
        self.widths = widths
        self.stem = conv_relu(3, widths.stem, 3, 2)
        blocks, in_chs, skip_chs = [], widths.stem, 0
        for args, w in zip(cfg.blocks, widths.blocks):
            blocks.append(FusedSelecSlsBlock(in_chs, skip_chs, w, args.is_first, args.stride))
            in_chs = w[5]
            if args.is_first:
                skip_chs = w[5]
        self.features = nn.Sequential(*blocks)
        self.head = None
        self.classifier = None
        self.num_features = in_chs
        if not features_only:
            layers = []
            for h, out_chs in zip(cfg.head, widths.head):
                layers.append(conv_relu(in_chs, out_chs, h.kernel, h.stride))
                in_chs = out_chs
            self.head = nn.Sequential(*layers)
            self.num_features = in_chs
            if num_classes > 0:
                self.classifier = nn.Sequential(nn.Linear(in_chs, num_classes))


def build(name: str, num_classes: int = 1000, features_only: bool = False) -> SelecSls:
    """Build a randomly initialised SelecSLS variant by name (see `resolve_name`)."""
    return SelecSls(SELECSLS_CONFIGS[resolve_name(name)], num_classes, features_only)


# --------------------------------------------------------------------------- checkpoints

class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


class CheckpointReport(NamedTuple):
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]
    ignored: list[str]  # head/classifier keys skipped by a features_only model


_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")


def _read_checkpoint(source) -> Mapping:
    if isinstance(source, Mapping):
        return source
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError...)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint "
                              f"(torch.load with weights_only=True failed: {reason})") from None


def _unwrap(obj, where: str) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping):
        wrapped = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapped is None:
            break
        obj = obj[wrapped]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{where} holds no state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{where} is not a state dict: {len(bad)} entries are not "
                              f"tensors (e.g. {', '.join(map(str, bad[:3]))})")
    return dict(obj)


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor],
                         model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Official/timm SelecSLS state dict -> this module's key layout (a new dict).

    Strips `module.` / `_orig_mod.` prefixes and renames timm's `fc.*` to `classifier.0.*`.
    With a features_only `model`, head and classifier keys are dropped.
    """
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        if key.startswith("fc."):
            key = "classifier.0." + key[3:]
        out[key] = value
    if model is not None and getattr(model, "features_only", False):
        out = {k: v for k, v in out.items() if k.startswith(("stem.", "features."))}
    return out


def _few(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _head3_hint(mismatched: list[str], state: Mapping, model: nn.Module) -> str:
    key = "head.3.0.weight"
    if key not in mismatched:
        return ""
    ckpt_k, model_k = state[key].shape[-1], model.state_dict()[key].shape[-1]
    if ckpt_k == 1 and model_k == 3:
        return " (this is an official SelecSLS84 checkpoint with a 1x1 head.3: build 'selecsls84')"
    if ckpt_k == 3 and model_k == 1:
        return " (this checkpoint has timm's 3x3 head.3: build 'selecsls84_timm')"
    return ""


def load_checkpoint(model: nn.Module, path_or_state_dict, strict: bool = True) -> CheckpointReport:
    """Load an official or timm SelecSLS checkpoint (a file path or a state dict) into `model`.

    Accepts `{'state_dict': ...}` / `{'model': ...}` wrappers and `module.` / `_orig_mod.`
    prefixes. A features_only model takes only `stem.*` and `features.*` and ignores the rest.

    Raises:
        CheckpointError: the file is unreadable, holds no state dict, or (strict) keys are
            missing, unexpected or of the wrong shape; the message names them.
    """
    source = path_or_state_dict
    where = f"checkpoint {os.fspath(source)!r}" if not isinstance(source, Mapping) else "state dict"
    raw = _unwrap(_read_checkpoint(source), where)
    state = checkpoint_filter_fn(raw, None)
    ignored = []
    if getattr(model, "features_only", False):
        ignored = [k for k in state if not k.startswith(("stem.", "features."))]
        state = {k: v for k, v in state.items() if k not in set(ignored)}

    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in state if k in expected and state[k].shape != expected[k].shape]

    name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    if mismatched:
        shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
                  for k in mismatched]
        problems.append(f"{len(mismatched)} shape mismatches ({_few(shapes, 3)})"
                        + _head3_hint(mismatched, state, model))
    if problems and strict:
        raise CheckpointError(f"{where} does not fit {name}: " + "; ".join(problems),
                              missing, unexpected, mismatched)

    usable = {k: v for k, v in state.items() if k in expected and k not in set(mismatched)}
    model.load_state_dict(usable, strict=False)
    if missing:
        _logger.info("%s: %d keys missing from %s: %s", name, len(missing), where, _few(missing))
    if unexpected or mismatched:
        _logger.warning("%s: skipped from %s: %s", name, where, "; ".join(problems))
    if ignored:
        _logger.info("%s: features_only model ignored %d head/classifier keys", name, len(ignored))
    return CheckpointReport(sorted(usable), missing, unexpected, mismatched, ignored)


# --------------------------------------------------------------------------- fusion and pruning

def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv with bias equal to conv -> bn (eval mode); the inputs are left unchanged."""
    w, b = _fused_params(conv, bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(w)
        fused.bias.copy_(b)
    return fused


def _fused_params(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused weight (in the conv's dtype) and float64 bias, both on the CPU (spec §1.8)."""
    with torch.no_grad():
        scale = bn.weight.double().cpu() / torch.sqrt(bn.running_var.double().cpu() + bn.eps)
        w = conv.weight.detach().cpu() * scale.to(conv.weight.dtype)[:, None, None, None]
        b = bn.bias.double().cpu() - bn.running_mean.double().cpu() * scale
        if conv.bias is not None:
            b = b + scale * conv.bias.double().cpu()
    return w, b


class _Chans(NamedTuple):
    """Validity mask of a tensor's channels and the constant value each removed channel holds."""
    keep: torch.Tensor   # bool
    const: torch.Tensor  # float64, 0 where kept


def _select(t: torch.Tensor, dim: int, keep: torch.Tensor) -> torch.Tensor:
    """Entries of `t` along `dim` where `keep` is True (a 1-D index: one survivor stays 1-D)."""
    if bool(keep.all()):
        return t
    return t.index_select(dim, keep.nonzero().flatten())


def _cat(*parts: _Chans) -> _Chans:
    return _Chans(torch.cat([p.keep for p in parts]), torch.cat([p.const for p in parts]))


class _Pruner:
    """Walks a SelecSls in data-flow order, fusing BN and removing channels with |gamma| <= thresh.

    A removed channel's weights are (near) zero after fusion, so its post-ReLU output is the
    constant ReLU(bias). That constant is folded into every consumer's bias: exact for 1x1 convs
    and the classifier; for 3x3 convs exact away from the image border (zero padding sees no
    constant there), which is why zeroing gamma *and* beta is the exact simulation of sparsity.
    """

    def __init__(self, gamma_thresh: float | None):
        self.thresh = gamma_thresh
        self.state: dict[str, torch.Tensor] = {}
        self.removed = 0

    def _keep(self, bn: nn.BatchNorm2d, name: str, force: bool) -> torch.Tensor:
        gamma = bn.weight.detach().double().cpu().abs()
        if self.thresh is None or force:
            return torch.ones_like(gamma, dtype=torch.bool)
        keep = gamma > self.thresh
        if not keep.any():  # a zero-width layer cannot run; keep its strongest channel
            _logger.warning("%s: every |gamma| <= %g; keeping one channel", name, self.thresh)
            keep[gamma.argmax()] = True
        return keep

    def layer(self, seq: nn.Sequential, name: str, src: _Chans, force: bool = False) -> _Chans:
        """Fuse `seq` (conv, bn, relu), fold the removed inputs' constants, select channels."""
        w, b = _fused_params(seq[0], seq[1])
        dropped = ~src.keep
        if dropped.any():
            b = b + torch.einsum("oikl,i->o", w[:, dropped].double(), src.const[dropped])
        keep = self._keep(seq[1], name, force)
        self.removed += int((~keep).sum())
        self.state[f"{name}.0.weight"] = _select(_select(w, 0, keep), 1, src.keep)
        self.state[f"{name}.0.bias"] = _select(b, 0, keep)
        const = torch.where(keep, torch.zeros_like(b), torch.relu(b))
        return _Chans(keep, const)

    def linear(self, lin: nn.Linear, name: str, src: _Chans) -> None:
        w = lin.weight.detach().cpu().clone()  # never share storage with the source
        b = lin.bias.detach().cpu().double().clone()
        dropped = ~src.keep
        if dropped.any():  # avg-pool of a constant map is the constant: exact
            b = b + w[:, dropped].double() @ src.const[dropped]
        self.state[f"{name}.weight"] = _select(w, 1, src.keep)
        self.state[f"{name}.bias"] = b


def _convert(model: nn.Module, gamma_thresh: float | None) -> FusedSelecSls:
    if isinstance(model, FusedSelecSls):
        raise TypeError("model is already fused; fuse or prune the original SelecSls")
    if not isinstance(model, SelecSls):
        raise TypeError(f"expected a SelecSls model, got {type(model).__name__}")
    p = _Pruner(gamma_thresh)
    rgb = _Chans(torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.float64))
    cur = p.layer(model.stem, "stem", rgb)
    stem_w = int(cur.keep.sum())
    # A features_only core's outputs feed someone else's heads: their widths must not change.
    taps = {model.stride8_index, len(model.features) - 1} if model.features_only else set()
    skip, block_widths = None, []
    for i, block in enumerate(model.features):
        n = f"features.{i}"
        a = p.layer(block.conv1, f"{n}.conv1", cur)
        b = p.layer(block.conv2, f"{n}.conv2", a)
        c = p.layer(block.conv3, f"{n}.conv3", b)
        d = p.layer(block.conv4, f"{n}.conv4", c)
        e = p.layer(block.conv5, f"{n}.conv5", d)
        # concat order: d1, d2, d3, then the stage skip
        cat = _cat(a, c, e) if block.is_first else _cat(a, c, e, skip)
        cur = p.layer(block.conv6, f"{n}.conv6", cat, force=i in taps)
        if block.is_first:
            skip = cur
        block_widths.append(tuple(int(x.keep.sum()) for x in (a, b, c, d, e, cur)))
    head_widths = []
    if model.head is not None:
        for j, seq in enumerate(model.head):
            cur = p.layer(seq, f"head.{j}", cur)
            head_widths.append(int(cur.keep.sum()))
        if model.classifier is not None:
            p.linear(model.classifier[0], "classifier.0", cur)

    widths = PrunedWidths(stem_w, tuple(block_widths), tuple(head_widths))
    ref = next(model.parameters())
    with torch.device("meta"):  # skip the random init: every tensor is assigned below
        fused = FusedSelecSls(model.cfg, widths, model.num_classes, model.features_only)
    state = {k: v.to(ref.dtype).contiguous() for k, v in p.state.items()}
    fused.load_state_dict(state, strict=True, assign=True)
    if gamma_thresh is not None:
        _logger.info("%s: pruned %d channels (|gamma| <= %g)",
                     model.cfg.name, p.removed, gamma_thresh)
    return fused.to(ref.device).eval()


def fuse_bn(model: SelecSls) -> FusedSelecSls:
    """A new eval-mode model with every BN folded into its conv (running statistics are used).

    The source model is not modified.
    """
    return _convert(model, None)


def prune(model: SelecSls, gamma_thresh: float = 1e-3) -> FusedSelecSls:
    """BN fusion plus removal of channels with |gamma| <= gamma_thresh (spec §1.9).

    Masks propagate through the concatenations in concat order (d1, d2, d3, skip) and through
    the stage skip. A removed channel's constant output ReLU(beta') is folded into its
    consumers' biases: exact for 1x1 consumers and the classifier; for 3x3 consumers exact
    except in the one-pixel border, where zero padding never saw the constant (channels with
    beta' <= 0 are exact everywhere). A features_only core keeps the widths of its two output
    maps, which other heads consume. A layer left with no channel keeps its strongest one. A
    negative threshold prunes nothing. The source model is not modified.
    """
    return _convert(model, float(gamma_thresh))
