"""PoseEstimator: frames in, tracked 3D people out. The façade over the whole chain:

    letterbox -> runtime (Stage I maps) -> decode (peaks, PAF grouping, 3D read-out) -> Stage II
    -> root translation from the intrinsics -> Stage III (tracking, One Euro, skeleton fit)

    est = PoseEstimator()                              # bundled weights, SelecSLS-60, 512x320, CPU
    result = est(frame_bgr)                            # FrameResult with tracked, smoothed people
    batch = est.detect_batch([f1, f2])                 # untracked, batched Stage I (servers)
    est = PoseEstimator(ModelConfig(backend="onnxruntime", onnx_dir="onnx_out"),
                        DecodeConfig(min_score=0.3), TrackConfig(tracking=False))

How Stage I and II run (weights, backend, precision, DynConv, test-time augmentation) is the
runtime's business (`xnect_app.runtime`, `ModelConfig`); everything after the maps is numpy here.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from ._moved import moved_names
from .nn.stage1 import STRIDE, Stage1Net
from .nn.stage2 import Stage2Model
from .pose.decode import decode as decode_maps
from .pose.paf import GroupingConfig
from .pose.root import solve_root_translation
from .pose.tracking import Tracker, TrackerConfig
from .runtime import ModelConfig, build_runtime, preprocess
from .runtime.torch_thread import on_torch_thread
from .types import FrameResult, Intrinsics, Person
from .weights import Networks

__all__ = ["PoseEstimator", "ModelConfig", "DecodeConfig", "TrackConfig", "Stage3Stream",
           "DEFAULT_FOV_DEG", "DEFAULT_MIN_SCORE"]

# Horizontal field of view assumed when the camera is unknown; typical of webcams and phones.
DEFAULT_FOV_DEG = 60.0
DEFAULT_MIN_SCORE = GroupingConfig.min_score


@dataclass(frozen=True)
class DecodeConfig:
    """From maps to people in camera millimetres.

    Args:
        threshold: heatmap peak threshold.
        min_score: people whose grouping score (about 1 for a confident, fully visible person) is
            lower are dropped (parts of 3-4 joints score under 0.2); 0.2 instead of 0.1 leaves a
            third fewer detections on coco_dev at the same AP.
        fov: horizontal field of view in degrees of the pinhole camera (metric 3D depends on it).
    """
    threshold: float = 0.1
    min_score: float = DEFAULT_MIN_SCORE
    fov: float = DEFAULT_FOV_DEG

    def __post_init__(self) -> None:
        object.__setattr__(self, "fov", float(self.fov))
        object.__setattr__(self, "min_score", float(self.min_score))
        Intrinsics.from_fov(16, 16, self.fov)  # validates the fov
        if not 0.0 <= self.min_score < 1.0:
            raise ValueError(f"min_score {self.min_score}: give a score in [0, 1)")


@dataclass(frozen=True)
class TrackConfig:
    """Stage III. tracking: identities and One Euro smoothing across calls (video), off for
    independent images; fit_skeleton: the kinematic skeleton fit (joint angles), needs tracking;
    tracker: how detections join tracks (pose.tracking.TrackerConfig, the --track-* options)."""
    tracking: bool = True
    fit_skeleton: bool = True
    tracker: TrackerConfig = field(default_factory=TrackerConfig)


class PoseEstimator:
    """Multi-person 3D pose estimator.

    Args:
        model: which networks run and how (`ModelConfig`; default: the bundled weights).
        decode: from maps to people (`DecodeConfig`).
        track: Stage III across frames (`TrackConfig`).
        networks: already built networks instead of the model's weights (training, benchmarks;
            see `from_networks`).
    """

    def __init__(self, model: ModelConfig | None = None, decode: DecodeConfig | None = None,
                 track: TrackConfig | None = None, *, networks: Networks | None = None, **keywords: Any):
        if keywords or not isinstance(model, (ModelConfig, type(None))):
            model, decode, track, networks = _from_keywords(model, decode, track, networks, keywords)
        self.model, self.decode = model or ModelConfig(), decode or DecodeConfig()
        self.track = track or TrackConfig()
        self._runtime = self._on_torch(build_runtime, self.model, networks, self.track.tracking)
        self.reset()

    @classmethod
    def from_networks(cls, stage1: Stage1Net, stage2: Stage2Model | None, model: ModelConfig | None = None,
                      decode: DecodeConfig | None = None, track: TrackConfig | None = None, *,
                      name: str | None = None, **keywords: Any) -> "PoseEstimator":
        """Networks the caller built; they run in the calling thread unless model.torch_thread
        (default model: ModelConfig(torch_thread=False))."""
        name = name or f"{stage1.cfg.backbone} (in training)"
        if keywords:  # the deprecated keywords (tracking=..., _name=...)
            keywords = {"torch_thread": False, "_name": name, **keywords, "_networks": (stage1, stage2)}
            model, decode, track, networks = _from_keywords(model, decode, track, None, keywords, stacklevel=3)
            return cls(model, decode, track, networks=networks)
        return cls(model or ModelConfig(torch_thread=False), decode, track, networks=Networks(stage1, stage2, name))

    def _on_torch(self, fn, /, *args: Any, **kwargs: Any):
        return on_torch_thread(fn, *args, **kwargs) if self.model.torch_thread else fn(*args, **kwargs)

    # -- what runs -------------------------------------------------------------------------------
    model_name = property(lambda self: self._runtime.model_name)
    precision = property(lambda self: self._runtime.precision)
    dynconv = property(lambda self: self._runtime.dynconv)
    stage1 = property(lambda self: self._runtime.stage1, doc="the torch Stage I (None with ONNX files)")
    stage2 = property(lambda self: self._runtime.stage2)
    runner = property(lambda self: self._runtime.maps, doc="letterboxed images -> Stage I maps (runtime.maps)")
    input_size = property(lambda self: self.model.input_size)
    device = property(lambda self: torch.device(self.model.device))
    backend = property(lambda self: self.model.backend)
    flip_test = property(lambda self: self.model.flip_test)
    flip_scale = property(lambda self: self.model.flip_scale)
    test_scales = property(lambda self: self.model.test_scales)
    fov = property(lambda self: self.decode.fov)
    min_score = property(lambda self: self.decode.min_score)
    threshold = property(lambda self: self.decode.threshold)
    tracking = property(lambda self: self.track.tracking)
    fit_skeleton = property(lambda self: self.track.fit_skeleton and self.track.tracking)

    def settings(self) -> dict[str, Any]:
        """How this estimator runs (recorded in the JSON-lines meta record, so outputs made with
        --flip, --scales, --dynconv ... say so)."""
        return {"input_wh": list(self.input_size), "backend": self.backend, "device": str(self.device),
                "dynconv": self.dynconv or False, "flip_test": self.flip_test, "flip_scale": self.flip_scale,
                "test_scales": list(self.test_scales), "min_score": self.min_score, "fov_deg": self.fov,
                "precision": self.precision}

    def intrinsics_for(self, width: int, height: int) -> Intrinsics:
        return Intrinsics.from_fov(width, height, self.fov)

    # -- streams ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new sequence: forget identities, filter state and motion masks."""
        self._frame_index = 0
        self._stream = self.new_stream() if self.tracking else None
        self._runtime.maps.reset()

    def new_stream(self) -> "Stage3Stream":
        """Stage III state for one video stream (a server keeps one per client)."""
        return Stage3Stream(fit_skeleton=self.fit_skeleton, config=self.track.tracker)

    def forget_stream(self, stream: Hashable) -> None:
        """Drop the motion-mask state of one stream of `detect_batch(..., streams=...)` (a client
        that left or restarts); its next frame warms up again."""
        self._runtime.maps.forget_stream(stream)

    # -- inference -------------------------------------------------------------------------------
    def __call__(self, frame_bgr: np.ndarray, timestamp: float | None = None) -> FrameResult:
        res = self.detect_batch([frame_bgr])[0]
        res.frame_index = self._frame_index
        res.time_s = float(timestamp) if timestamp is not None else float(self._frame_index) / 30.0
        self._frame_index += 1
        if self._stream is not None:
            self._stream.process(res, image=frame_bgr)
        return res

    def detect_batch(self, frames: Sequence[np.ndarray],
                     streams: Sequence[Hashable] | None = None) -> list[FrameResult]:
        """Stage I + II and root translation for several frames at once; no tracking.

        streams: the stream (client, camera) of each frame, for motion masks (dynconv="motion"):
        each stream then has its own motion gate and background, so frames of several static
        cameras can share a batch (`forget_stream` drops one). Without it, all frames are taken as
        consecutive frames of one stream.
        """
        return self._on_torch(self._detect_batch, frames, streams)

    @torch.inference_mode()
    def _detect_batch(self, frames: Sequence[np.ndarray], streams: Sequence[Hashable] | None) -> list[FrameResult]:
        if not frames:
            return []
        if streams is not None and len(streams) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(streams)} streams")
        t0 = time.perf_counter()
        inputs, boxes = [], []
        for f in frames:
            if f is None or f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
                raise ValueError("frames must be H x W x 3 uint8 BGR images")
            img, box = preprocess.letterbox(f, self.input_size)
            inputs.append(img)
            boxes.append(box)
        t1 = time.perf_counter()
        maps = self._runtime.maps(inputs, streams)
        t2 = time.perf_counter()
        results = []
        for i, f in enumerate(frames):
            t_dec = time.perf_counter()
            fh, fw = f.shape[:2]
            people = self._people(maps.heatmaps[i], maps.pafs[i], maps.enc3d[i], boxes[i], fw, fh)
            res = FrameResult(frame_index=0, time_s=0.0, image_size=(fw, fh), people=people,
                              intrinsics=self.intrinsics_for(fw, fh),
                              timings_ms={"preprocess": (t1 - t0) * 1000 / len(frames),
                                          "stage1": (t2 - t1) * 1000 / len(frames),
                                          "decode": (time.perf_counter() - t_dec) * 1000})
            if maps.masks is not None:
                res.dynconv_mask = boxes[i].mask_to_frame(maps.masks[i], fw, fh)
                res.computed_share = float((maps.masks[i] > 0).mean())
            results.append(res)
        return results

    def _people(self, hm: np.ndarray, paf: np.ndarray, enc: np.ndarray, box: preprocess.Letterbox,
                fw: int, fh: int) -> list[Person]:
        """Decode one frame's maps, lift to 3D and place the people in camera space."""
        found = decode_maps(hm, paf, enc, stride=STRIDE, peak_threshold=self.threshold,
                            grouping=GroupingConfig(min_score=self.min_score))
        if len(found) == 0:
            return []
        kp3d_m = found.kp3d_rel_mm / 1000.0  # P x 21 x 3, NaN where unread
        if self._runtime.lift is not None:
            kp3d_m = self._runtime.lift(found.stage2_in, np.nan_to_num(kp3d_m), found.kp3d_valid.astype(np.float32))
        kp3d_mm = kp3d_m * 1000.0
        kp2d = found.kp2d.astype(np.float64).copy()
        missing = ~(kp2d[..., 2] > 0)
        kp2d[..., :2] = box.to_frame(kp2d[..., :2])
        kp2d[missing, :2] = np.nan
        kp2d[missing, 2] = 0.0
        roots, ok = solve_root_translation(kp3d_mm, kp2d, self.intrinsics_for(fw, fh))
        roots = np.where(np.asarray(ok)[:, None], roots, np.nan)
        return [Person(track_id=-1, score=float(found.scores[i]), kp2d=kp2d[i], kp3d_rel_mm=kp3d_mm[i],
                       kp3d_cam_mm=kp3d_mm[i] + roots[i][None]) for i in range(len(found))]

    @classmethod
    def from_checkpoint(cls, path: str | Path, **keywords: Any) -> "PoseEstimator":
        """Deprecated: PoseEstimator(ModelConfig(checkpoint=path), ...)."""
        warnings.warn("PoseEstimator.from_checkpoint(path, ...) is deprecated: pass "
                      "PoseEstimator(ModelConfig(checkpoint=path), ...)", DeprecationWarning, stacklevel=2)
        model, decode, track, _ = _split_keywords(keywords)
        return cls(replace(model, checkpoint=str(path)), decode, track)


class Stage3Stream:
    """Identity tracking, One Euro smoothing and skeleton fitting for one stream of frames."""

    def __init__(self, fit_skeleton: bool = True, config: TrackerConfig | None = None):
        self.fit_skeleton = fit_skeleton
        self.tracker = Tracker(config=config)

    def process(self, res: FrameResult, image: np.ndarray | None = None) -> FrameResult:
        """Tracks, smooths and fits res.people in place (frame order matters); returns res.
        image: the frame (BGR), whose colours help find people again after an occlusion."""
        t0 = time.perf_counter()
        res.people = self.tracker.update(res.people, res.time_s, res.intrinsics, fit_skeleton=self.fit_skeleton,
                                         image=image)
        res.timings_ms["stage3"] = (time.perf_counter() - t0) * 1000
        return res


# -- the keywords of the first release, kept for one more ----------------------------------------
_DECODE_KEYS = ("threshold", "min_score", "fov")
_TRACK_KEYS = ("tracking", "fit_skeleton")


def _split_keywords(kw: dict[str, Any]) -> tuple[ModelConfig, DecodeConfig, TrackConfig, Networks | None]:
    kw = dict(kw)
    networks = kw.pop("_networks", None)
    name = kw.pop("_name", None)
    if networks is not None:
        networks = Networks(*networks, name or f"{networks[0].cfg.backbone} (in training)")
    unknown = set(kw) - set(ModelConfig.field_names()) - set(_DECODE_KEYS) - set(_TRACK_KEYS)
    if unknown:
        raise TypeError(f"PoseEstimator got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    pick = lambda keys: {k: kw[k] for k in keys if k in kw}  # noqa: E731
    return (ModelConfig(**pick(ModelConfig.field_names())), DecodeConfig(**pick(_DECODE_KEYS)),
            TrackConfig(**pick(_TRACK_KEYS)), networks)


def _from_keywords(model, decode, track, networks, keywords: dict[str, Any], stacklevel: int = 3):
    """PoseEstimator(weights=..., input_size=..., tracking=..., ...) as (model, decode, track, networks)."""
    warnings.warn("PoseEstimator(weights=..., tracking=..., ...) keywords are deprecated: pass "
                  "PoseEstimator(ModelConfig(...), DecodeConfig(...), TrackConfig(...))", DeprecationWarning,
                  stacklevel=stacklevel)
    if model is not None and not isinstance(model, ModelConfig):
        keywords = {"weights": model, **keywords}  # the old first positional argument
    if decode is not None or track is not None:
        raise TypeError("give either configs or the deprecated keywords, not both")
    new_model, new_decode, new_track, old_networks = _split_keywords(keywords)
    return new_model, new_decode, new_track, networks or old_networks


__getattr__ = moved_names(__name__, {
    "letterbox": "xnect_app.runtime.preprocess", "Letterbox": "xnect_app.runtime.preprocess",
    "PAD_VALUE": "xnect_app.runtime.preprocess", "cpu_has_bf16": "xnect_app.runtime.precision",
    "resolve_precision": "xnect_app.runtime.precision", "PRECISIONS": "xnect_app.runtime.precision",
    "BACKENDS": "xnect_app.runtime.config", "MODELS_DIR": "xnect_app.weights",
    "DEFAULT_WEIGHTS": "xnect_app.weights", "default_weights_path": "xnect_app.weights",
    "load_weights": "xnect_app.weights"})
