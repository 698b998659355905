"""The Stage I heads, defined once: their layers (`head_layers`) and their wiring (`run_heads`).

Every execution of the heads runs `run_heads` with its own `ops`: the plain modules (`ModuleOps`:
training, dense inference, the BN-folded snapshot), the masked-dense reference and the sparse
DynConv executors (`nn/dynconv.py`). What a sparse executor needs to know about the graph, such as
which cells each layer must compute (`head_levels`), is read off the same wiring (`HEAD_GRAPH`).

    2D branch: f16 -> b2d_reduce -> b2d_up --+-- [f8 -> b2d_skip8] -> b2d_conv1 -> b2d_conv2 -> b2d_out
    3D branch: f16 -> b3d_reduce -> b3d_up -> b3d_conv1 -> [b2d_up] -> b3d_merge -> b3d_conv2 -> b3d_out
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import nn

__all__ = ["conv_bn_relu", "deconv_bn_relu", "head_layers", "run_heads", "match_size", "ModuleOps",
           "HeadLayer", "HEAD_GRAPH", "HEAD_OUTPUTS", "kernel_of", "head_levels"]


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def deconv_bn_relu(cin: int, cout: int, groups: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def head_layers(cfg: Any, c8: int, c16: int) -> list[tuple[str, nn.Module]]:
    """The heads' layers, in the order Stage1Net registers them (the order of its state dict).

    cfg: a Stage1Config (widths_2d, widths_3d, skip8_chs, num_joints_2d, num_pafs, num_enc3d);
    c8, c16: channels of the backbone's stride-8 and stride-16 taps.
    """
    w2, w3 = cfg.widths_2d, cfg.widths_3d
    return [
        ("b2d_reduce", conv_bn_relu(c16, w2[0], 1)),
        ("b2d_up", deconv_bn_relu(w2[0], w2[1])),
        ("b2d_skip8", conv_bn_relu(c8, cfg.skip8_chs, 1)),
        ("b2d_conv1", conv_bn_relu(w2[1] + cfg.skip8_chs, w2[2])),
        ("b2d_conv2", conv_bn_relu(w2[2], w2[3])),
        ("b2d_out", nn.Conv2d(w2[3], cfg.num_joints_2d + cfg.num_pafs, 3, padding=1)),
        ("b3d_reduce", conv_bn_relu(c16, w3[0], 1)),
        ("b3d_up", deconv_bn_relu(w3[0], w3[1])),
        ("b3d_conv1", conv_bn_relu(w3[1], w3[2])),
        ("b3d_merge", conv_bn_relu(w2[1] + w3[2], w3[3], 1)),
        ("b3d_conv2", conv_bn_relu(w3[3], w3[4])),
        ("b3d_out", nn.Conv2d(w3[4], cfg.num_enc3d, 3, padding=1)),
    ]


def run_heads(ops, f8, f16):
    """The heads' wiring: (2D maps: heatmaps then PAFs, 3D encodings) from the stride-8 and stride-16
    features.

    ops.conv(name, x) runs layer `name` on x, ops.up(name, x, like) its 2x upsampling onto the grid
    of `like`, and ops.cat(*xs) joins channels; what x is (a tensor, compact rows of active cells,
    ...) is up to the ops.
    """
    u2 = ops.up("b2d_up", ops.conv("b2d_reduce", f16), like=f8)
    y2 = ops.conv("b2d_conv1", ops.cat(u2, ops.conv("b2d_skip8", f8)))
    out2 = ops.conv("b2d_out", ops.conv("b2d_conv2", y2))
    u3 = ops.up("b3d_up", ops.conv("b3d_reduce", f16), like=f8)
    y3 = ops.conv("b3d_merge", ops.cat(u2, ops.conv("b3d_conv1", u3)))
    enc = ops.conv("b3d_out", ops.conv("b3d_conv2", y3))
    return out2, enc


def match_size(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Crop/pad a stride-8 map made by upsampling to the exact size of the backbone's stride-8 map."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    h, w = ref.shape[-2:]
    x = x[..., :h, :w]
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph or pw:
        x = nn.functional.pad(x, (0, pw, 0, ph))
    return x


def kernel_of(layer: nn.Module) -> int:
    conv = layer[0] if isinstance(layer, nn.Sequential) else layer
    return int(conv.kernel_size[0])


class ModuleOps:
    """`run_heads` ops on dense NCHW tensors with the modules of `layers` (a Stage1Net or a copy of
    its heads). tap(name, x), if given, sees (and may replace) the input of every 3x3 conv."""

    def __init__(self, layers: nn.Module, tap: Callable[[str, torch.Tensor], torch.Tensor] | None = None):
        self.layers, self.tap = layers, tap

    def conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        layer = getattr(self.layers, name)
        if self.tap is not None and kernel_of(layer) > 1:
            x = self.tap(name, x)
        return layer(x)

    def up(self, name: str, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return match_size(getattr(self.layers, name)(x), like)

    @staticmethod
    def cat(*xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, 1)


class HeadLayer(NamedTuple):
    name: str
    kind: str                  # "conv" or "up"
    inputs: tuple[str, ...]    # producing layers, or "f8" / "f16" for the backbone's taps
    grid: int                  # stride of the layer's output (8 or 16)


class _Trace:
    """Ops that record the wiring instead of computing."""

    def __init__(self):
        self.layers: list[HeadLayer] = []
        self.grid = {"f8": 8, "f16": 16}

    def _add(self, name: str, kind: str, x, grid: int) -> str:
        self.layers.append(HeadLayer(name, kind, tuple(x) if isinstance(x, tuple) else (x,), grid))
        self.grid[name] = grid
        return name

    def conv(self, name: str, x):
        grids = {self.grid[i] for i in (x if isinstance(x, tuple) else (x,))}
        if len(grids) != 1:
            raise ValueError(f"{name}: inputs on different grids")
        return self._add(name, "conv", x, grids.pop())

    def up(self, name: str, x, like):
        return self._add(name, "up", x, self.grid[like])

    @staticmethod
    def cat(*xs):
        return xs


def _trace() -> tuple[tuple[HeadLayer, ...], tuple[str, str]]:
    t = _Trace()
    outputs = run_heads(t, "f8", "f16")
    return tuple(t.layers), outputs


HEAD_GRAPH, HEAD_OUTPUTS = _trace()


def head_levels(layers: nn.Module) -> dict[str, int]:
    """For each head layer, how many cell rings around the output mask it must compute so that
    the maps are exact on the mask: 0 for the output convs, +1 for each 3x3 conv that reads the
    layer on the way to an output. A stride-16 layer gets the level of the upsampling it feeds
    (the cells it computes are those that upsampling reads)."""
    level: dict[str, int] = {name: 0 for name in HEAD_OUTPUTS}
    for layer in reversed(HEAD_GRAPH):
        own = level[layer.name]
        if layer.kind == "up":
            need = own
        else:
            need = own + kernel_of(getattr(layers, layer.name)) // 2
        for src in layer.inputs:
            if src in ("f8", "f16"):
                continue
            if layer.kind == "up" and kernel_of(getattr(layers, src)) != 1:
                raise ValueError(f"{src}: the sparse heads take a 1x1 conv before an upsampling")
            level[src] = max(level.get(src, 0), need)
    return level
