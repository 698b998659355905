"""XNect Stage II: one fully connected network, batched over people, that turns each person's
(possibly partial) per-joint Stage I read-out into a complete root-relative 21-joint 3D pose.

Input per person: for each of the 19 2D joints, the 63-channel 3D encoding sampled at that joint
plus (u, v, confidence) with u, v normalised to the person (xnect_app.pose.readout.stage2_inputs);
undetected joints are all zeros. Output: 21 x 3 root-relative metres. With
`Stage2Config(use_encodings=False)` the encodings and the read-out are ignored: a 2D -> 3D lifter.
`Stage2Ensemble` averages several such networks (e.g. a lifter and one that reads the encodings).

The network predicts a residual on top of the hand-crafted read-out it is given (also an input),
so an untrained or lightly trained Stage II starts from the read-out rather than from zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import skeleton


@dataclass(frozen=True)
class Stage2Config:
    num_joints_2d: int = skeleton.NUM_JOINTS_2D
    enc_chs: int = 3 * skeleton.NUM_JOINTS_3D
    num_joints_3d: int = skeleton.NUM_JOINTS_3D
    width: int = 1024
    depth: int = 3
    dropout: float = 0.1
    # False: lift from the 2D joints (u, v, confidence) alone and ignore Stage I's 3D encodings
    # (for Stage I weights whose 3D branch is not yet better than nothing).
    use_encodings: bool = True

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "Stage2Config":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class Stage2Net(nn.Module):
    def __init__(self, cfg: Stage2Config = Stage2Config()):
        super().__init__()
        self.cfg = cfg
        n_in = cfg.num_joints_2d * (cfg.enc_chs + 3) + cfg.num_joints_3d * 4
        layers: list[nn.Module] = []
        for i in range(cfg.depth):
            layers += [nn.Linear(n_in if i == 0 else cfg.width, cfg.width), nn.BatchNorm1d(cfg.width),
                       nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(cfg.width, cfg.num_joints_3d * 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, joint_feats: torch.Tensor, readout: torch.Tensor, readout_valid: torch.Tensor) -> torch.Tensor:
        """joint_feats: P x 19 x 66; readout: P x 21 x 3 metres (0 where invalid); readout_valid:
        P x 21 (0/1). Returns P x 21 x 3 root-relative metres."""
        p = joint_feats.shape[0]
        if p == 0:
            return readout.new_zeros((0, self.cfg.num_joints_3d, 3))
        if not self.cfg.use_encodings:
            e = self.cfg.enc_chs
            joint_feats = torch.cat([torch.zeros_like(joint_feats[..., :e]), joint_feats[..., e:]], -1)
            readout_valid = torch.zeros_like(readout_valid)
        base = readout * readout_valid[..., None]
        x = torch.cat([joint_feats.reshape(p, -1), base.reshape(p, -1), readout_valid.reshape(p, -1)], 1)
        delta = self.out(self.body(x)).view(p, self.cfg.num_joints_3d, 3)
        pose = base + delta
        return pose - pose[:, skeleton.ROOT_3D:skeleton.ROOT_3D + 1]


@dataclass(frozen=True)
class Stage2EnsembleConfig:
    """Configs of the member networks; they share their inputs and outputs."""

    members: tuple[Stage2Config, ...]

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a Stage II ensemble needs at least one member")
        shapes = {(c.num_joints_2d, c.enc_chs, c.num_joints_3d) for c in self.members}
        if len(shapes) > 1:
            raise ValueError(f"Stage II members differ in their inputs or outputs: {sorted(shapes)}")

    @property
    def num_joints_2d(self) -> int:
        return self.members[0].num_joints_2d

    @property
    def enc_chs(self) -> int:
        return self.members[0].enc_chs

    @property
    def num_joints_3d(self) -> int:
        return self.members[0].num_joints_3d

    def to_dict(self) -> dict:
        return {"members": [c.to_dict() for c in self.members]}


class Stage2Ensemble(nn.Module):
    """Several Stage II networks on the same input, their root-relative poses averaged.

    A 2D lifter gets the body's shape right but often its turn in depth wrong; a network that
    reads Stage I's encodings the other way round. Their errors differ, so the mean beats both
    (models/README.md has the figures).
    """

    def __init__(self, cfg: Stage2EnsembleConfig):
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(Stage2Net(c) for c in cfg.members)

    def forward(self, joint_feats: torch.Tensor, readout: torch.Tensor, readout_valid: torch.Tensor) -> torch.Tensor:
        """Same inputs and output as `Stage2Net.forward`."""
        return torch.stack([m(joint_feats, readout, readout_valid) for m in self.members]).mean(0)


Stage2Model = Stage2Net | Stage2Ensemble  # what a weights file's Stage II loads as


def build_stage2(cfg: dict[str, Any]) -> Stage2Model:
    """The Stage II network a weights file's `stage2_config` describes (a single network or an
    ensemble, `{"members": [...]}`)."""
    if "members" in cfg:
        return Stage2Ensemble(Stage2EnsembleConfig(tuple(Stage2Config.from_dict(c) for c in cfg["members"])))
    return Stage2Net(Stage2Config.from_dict(cfg))
