"""The one reader and writer of weights files, and the networks of training checkpoints.

A weights file (models/*.pt, written by `xnect-train export`) is a dict:
    format          WEIGHTS_FORMAT
    stage1_config   Stage1Config.to_dict()
    stage1          Stage I state dict (float16 unless exported with --fp32)
    stage2_config   build_stage2's config   } when the model has a Stage II
    stage2          Stage II state dict     }
    meta            steps, loss history, training config, how the weights were made
A training checkpoint (runs/NAME/last.pt) holds `model` (the raw weights), `ema` (their moving
average, or None), `stage1_config` or `stage2_config`, `step`, `history` and the optimizer state.

    nets = load_networks(weights="models/xnect_selecsls60.pt")   # Networks(stage1, stage2, name)
    nets = load_networks(checkpoint="runs/xnect60/last.pt")      # Stage I only: the moving average
    nets = load_networks(random_init=True, backbone="selecsls42b", seed=0)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .assets import asset_dir
from .nn.stage1 import Stage1Config, Stage1Net
from .nn.stage2 import Stage2Model, build_stage2

__all__ = ["WEIGHTS_FORMAT", "MODELS_DIR", "DEFAULT_WEIGHTS", "Networks", "default_weights_path",
           "read_weights_file", "read_document", "write_weights_file", "load_weights", "read_checkpoint",
           "checkpoint_weights", "load_checkpoint", "random_networks", "load_networks"]

WEIGHTS_FORMAT = "xnect_app.weights/1"
MODELS_DIR = asset_dir("models")
DEFAULT_WEIGHTS = "xnect_selecsls60.pt"


class Networks(NamedTuple):
    stage1: Stage1Net
    stage2: Stage2Model | None
    name: str  # how outputs name the model: the weights file's stem, "run@step", or a random init


def default_weights_path() -> Path:
    return MODELS_DIR / DEFAULT_WEIGHTS


def _float(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def read_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """The document of a weights file (tensors only, `weights_only`); ValueError for anything else."""
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{path}: not a readable xnect weights file ({type(e).__name__})") from None
    if not isinstance(doc, dict) or "stage1" not in doc:
        raise ValueError(f"{path}: not an xnect weights file (no 'stage1' entry)")
    return doc


def read_document(path: str | os.PathLike) -> dict[str, Any]:
    """A weights file or a training checkpoint, whole (checkpoints hold more than tensors)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def write_weights_file(doc: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a weights file atomically (a temporary name, then a rename)."""
    if doc.get("format") != WEIGHTS_FORMAT or "stage1" not in doc:
        raise ValueError(f"not a {WEIGHTS_FORMAT} document")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(doc, tmp)
    os.replace(tmp, path)


def load_weights(path: str | os.PathLike) -> tuple[Stage1Net, Stage2Model | None]:
    """Networks from a weights file, in float32."""
    doc = read_weights_file(path)
    s1 = Stage1Net(Stage1Config.from_dict(doc.get("stage1_config", {})))
    s1.load_state_dict(_float(doc["stage1"]))
    s2 = None
    if "stage2" in doc:
        s2 = build_stage2(doc.get("stage2_config", {}))
        s2.load_state_dict(_float(doc["stage2"]))
    return s1, s2


def checkpoint_weights(ck: dict, averaged: bool = True) -> tuple[dict, dict]:
    """(weights, network config) of a loaded training checkpoint: the weights' moving average when
    it keeps one (and `averaged`), else the raw weights."""
    model = ck["ema"] if averaged and ck.get("ema") is not None else ck["model"]
    return model, ck.get("stage1_config") or ck.get("stage2_config") or {}


def read_checkpoint(path: str | os.PathLike, averaged: bool = True) -> tuple[dict, dict, dict]:
    """(weights, network config, whole checkpoint) of a training checkpoint (see checkpoint_weights)."""
    ck = read_document(path)
    return *checkpoint_weights(ck, averaged), ck


def load_checkpoint(path: str | os.PathLike) -> tuple[Stage1Net, int]:
    """The Stage I network of a training checkpoint (its moving average when it keeps one, which
    is what `xnect-train export` takes) and the checkpoint's step."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    try:
        weights, cfg, ck = read_checkpoint(path)
        net = Stage1Net(Stage1Config.from_dict(cfg))
        net.load_state_dict(weights)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the same user error
        raise ValueError(f"{path}: not a Stage I training checkpoint ({type(e).__name__})") from None
    return net, int(ck.get("step", 0))


def random_networks(backbone: str = "selecsls60", seed: int | None = None, mask_unit: bool = False) -> Networks:
    """An untrained Stage I (no Stage II), for testing tools; seeded: the same network every run
    (without touching torch's global random state), else drawn from it."""
    def build() -> Stage1Net:
        return Stage1Net(Stage1Config(backbone=backbone, dynconv=mask_unit))

    if seed is None:
        net = build()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build()
    return Networks(net, None, f"{backbone} (random init, untrained)")


def load_networks(weights: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
                  random_init: bool = False, backbone: str = "selecsls60", seed: int | None = None,
                  mask_unit: bool = False) -> Networks:
    """The networks of one source: a weights file (None: the bundled one), a Stage I training
    checkpoint, or an untrained network (`random_networks(backbone, seed, mask_unit)`).

    FileNotFoundError / ValueError (with the file named) for a missing or unreadable source, and
    when several sources are given.
    """
    given = [flag for flag, on in (("weights", weights is not None), ("checkpoint", checkpoint is not None),
                                   ("random_init", random_init)) if on]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} exclude each other: give one source of weights")
    if random_init:
        return random_networks(backbone, seed, mask_unit)
    if checkpoint is not None:
        net, step = load_checkpoint(checkpoint)
        return Networks(net, None, f"{Path(checkpoint).parent.name}@{step}")
    path = Path(weights) if weights is not None else default_weights_path()
    if not path.is_file():
        hint = "the bundled default weights are missing from models/" if weights is None else "check the path"
        raise FileNotFoundError(f"weights file {str(path)!r} not found ({hint}); "
                                "pass random_init=True / --random-weights for an untrained network")
    s1, s2 = load_weights(path)
    return Networks(s1, s2, path.stem)
