"""XNect Stage II: one fully connected network, batched over people, that turns each person's
(possibly partial) per-joint Stage I read-out into a complete root-relative 21-joint 3D pose.

Input per person: for each of the 19 2D joints, the 63-channel 3D encoding sampled at that joint
plus (u, v, confidence) with u, v normalised to the person (xnect_app.pose.readout.stage2_inputs);
undetected joints are all zeros. Output: 21 x 3 root-relative metres. With
`Stage2Config(use_encodings=False)` the encodings and the read-out are ignored: a 2D -> 3D lifter.

The network predicts a residual on top of the hand-crafted read-out it is given (also an input),
so an untrained or lightly trained Stage II starts from the read-out rather than from zero.
"""
from __future__ import annotations

from dataclasses import dataclass

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
