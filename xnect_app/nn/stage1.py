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

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from .. import skeleton
from . import selecsls

STRIDE = 8
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


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

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "Stage1Config":
        d = dict(d)
        for k in ("widths_2d", "widths_3d"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def deconv_bn_relu(cin: int, cout: int, groups: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Stage1Net(nn.Module):
    def __init__(self, cfg: Stage1Config = Stage1Config()):
        super().__init__()
        self.cfg = cfg
        self.core = selecsls.build(cfg.backbone, features_only=True)
        c8, c16 = self._tap_channels()
        w2, w3 = cfg.widths_2d, cfg.widths_3d
        # 2D branch
        self.b2d_reduce = conv_bn_relu(c16, w2[0], 1)
        self.b2d_up = deconv_bn_relu(w2[0], w2[1])
        self.b2d_skip8 = conv_bn_relu(c8, cfg.skip8_chs, 1)
        self.b2d_conv1 = conv_bn_relu(w2[1] + cfg.skip8_chs, w2[2])
        self.b2d_conv2 = conv_bn_relu(w2[2], w2[3])
        self.b2d_out = nn.Conv2d(w2[3], cfg.num_joints_2d + cfg.num_pafs, 3, padding=1)
        # 3D branch
        self.b3d_reduce = conv_bn_relu(c16, w3[0], 1)
        self.b3d_up = deconv_bn_relu(w3[0], w3[1])
        self.b3d_conv1 = conv_bn_relu(w3[1], w3[2])
        self.b3d_merge = conv_bn_relu(w2[1] + w3[2], w3[3], 1)
        self.b3d_conv2 = conv_bn_relu(w3[3], w3[4])
        self.b3d_out = nn.Conv2d(w3[4], cfg.num_enc3d, 3, padding=1)
        self.register_buffer("mean", torch.tensor([m * 255 for m in IMAGENET_MEAN_RGB[::-1]]).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor([s * 255 for s in IMAGENET_STD_RGB[::-1]]).view(1, 3, 1, 1),
                             persistent=False)
        self._init_heads()

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

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        # BGR 0..255 -> ImageNet-normalised BGR order (the channel order the core was built for
        # is irrelevant when training from scratch; ImageNet weights expect RGB, handled by the
        # loader flipping the stem's input channels).
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> Stage1Output:
        feats = self.core(self.normalise(x))
        f8, f16 = feats.stride8, feats.stride16
        u2 = self.b2d_up(self.b2d_reduce(f16))
        u2 = _match(u2, f8)
        y2 = self.b2d_conv2(self.b2d_conv1(torch.cat([u2, self.b2d_skip8(f8)], 1)))
        out2 = self.b2d_out(y2)
        u3 = _match(self.b3d_up(self.b3d_reduce(f16)), f8)
        y3 = self.b3d_conv1(u3)
        y3 = self.b3d_conv2(self.b3d_merge(torch.cat([u2, y3], 1)))
        enc = self.b3d_out(y3)
        j = self.cfg.num_joints_2d
        return Stage1Output(out2[:, :j], out2[:, j:], enc)


def _match(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Crop/pad a stride-8 map made by upsampling to the exact size of the backbone's stride-8 map."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    h, w = ref.shape[-2:]
    x = x[..., :h, :w]
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph or pw:
        x = nn.functional.pad(x, (0, pw, 0, ph))
    return x


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
