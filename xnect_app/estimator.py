"""PoseEstimator: frames in, tracked 3D people out. The only place that knows the whole chain.

    est = PoseEstimator()                    # bundled weights, SelecSLS-60, 512x320, CPU
    result = est(frame_bgr)                  # FrameResult with tracked, smoothed people
    batch = est.detect_batch([f1, f2])       # untracked, batched Stage I (servers)
    est = PoseEstimator(backend="onnxruntime", onnx_dir="onnx_out")   # files from `xnect-export onnx`

Chain: letterbox -> Stage I (torch) -> peaks + PAF grouping + 3D read-out (numpy) -> Stage II
(torch, batched over people) -> root translation from the intrinsics -> Stage III tracking,
One Euro smoothing and skeleton fit (numpy/scipy). With backend="onnxruntime", Stage I and II
run in ONNX Runtime (xnect_app.export) and everything else is unchanged.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Sequence

import cv2
import numpy as np
import torch

from .assets import asset_dir
from .motion_mask import FIRST_MASKED_BLOCK, MotionGate
from .nn.stage1 import STRIDE, Stage1Config, Stage1Net
from .nn.stage2 import Stage2Model, build_stage2
from .pose.paf import GroupingConfig
from .pose.tta import average_with_mirror, fuse_scales, resize_maps, scaled_size, unmirror_maps
from .torch_thread import on_torch_thread
from .types import FrameResult, Intrinsics, Person

_logger = logging.getLogger(__name__)

MODELS_DIR = asset_dir("models")
DEFAULT_WEIGHTS = "xnect_selecsls60.pt"
# Horizontal field of view assumed when the camera is unknown; typical of webcams and phones.
DEFAULT_FOV_DEG = 60.0
DEFAULT_MIN_SCORE = GroupingConfig.min_score
PAD_VALUE = 114
BACKENDS = ("torch", "onnxruntime")
PRECISIONS = ("auto", "fp32", "bf16")
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bfloat16 instructions (x86 avx512_bf16 or AMX), from /proc/cpuinfo.
    Without them bfloat16 convolutions are emulated and slower than float32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return any(f in line.split() for f in _BF16_CPU_FLAGS)
    return False


def resolve_precision(precision: str, backend: str, device: torch.device) -> str:
    """"fp32" or "bf16" for PoseEstimator(precision=...): auto is bf16 for the torch backend on a CPU
    with bfloat16 instructions, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if backend == "torch" and device.type == "cpu" and cpu_has_bf16() else "fp32"
    if precision == "bf16" and (backend != "torch" or device.type != "cpu"):
        raise ValueError(f"bf16 inference runs with the torch backend on the CPU, not {backend} on {device}")
    return precision


@dataclass(frozen=True)
class Letterbox:
    """Input frame -> network input: x_net = scale * x + ox, y_net = scale * y + oy."""
    scale: float
    ox: float
    oy: float

    def to_frame(self, xy: np.ndarray) -> np.ndarray:
        out = np.array(xy, dtype=np.float64, copy=True)
        out[..., 0] = (out[..., 0] - self.ox) / self.scale
        out[..., 1] = (out[..., 1] - self.oy) / self.scale
        return out

    def mask_to_frame(self, mask: np.ndarray, width: int, height: int, stride: int = STRIDE) -> np.ndarray:
        """A network-input grid mask (cells of `stride` pixels) as a width x height uint8 frame mask."""
        # frame pixel centre x -> net pixel x_net = scale * x + ox -> cell (x_net + 0.5) / stride - 0.5
        a = self.scale / stride
        m = np.array([[a, 0.0, (self.ox + 0.5) / stride - 0.5], [0.0, a, (self.oy + 0.5) / stride - 0.5]])
        return cv2.warpAffine(np.ascontiguousarray(mask, np.uint8), m, (int(width), int(height)),
                              flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)


def letterbox(frame: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad to size (w, h), centred."""
    w, h = size
    fh, fw = frame.shape[:2]
    s = min(w / fw, h / fh)
    nw, nh = max(1, round(fw * s)), max(1, round(fh * s))
    resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    ox, oy = (w - nw) // 2, (h - nh) // 2
    out = np.full((h, w, 3), PAD_VALUE, np.uint8)
    out[oy:oy + nh, ox:ox + nw] = resized
    # Pixel centres: x_net + 0.5 = s_x * (x + 0.5) with s_x = nw / fw.
    sx = nw / fw
    return out, Letterbox(sx, ox + 0.5 * sx - 0.5, oy + 0.5 * (nh / fh) - 0.5)


def default_weights_path() -> Path:
    return MODELS_DIR / DEFAULT_WEIGHTS


class PoseEstimator:
    """Multi-person 3D pose estimator.

    Args:
        weights: weights file made by `xnect-train export`; None = the bundled default.
        backbone: SelecSLS variant, used only with random_init (weights carry their own).
        input_size: network input (width, height), multiples of 16.
        device: torch device string.
        fov: horizontal field of view in degrees for the pinhole camera (metric 3D depends on it).
        random_init: build an untrained network instead of loading weights (tests, benchmarks).
        tracking: identity tracking + One Euro smoothing across calls (video); off for images.
        fit_skeleton: Stage III kinematic skeleton fit (joint angles); needs tracking.
        threshold: heatmap peak threshold.
        min_score: people whose grouping score (about 1 for a confident, fully visible person) is
            lower are dropped (parts of 3-4 joints score under 0.2); 0.2 instead of 0.1 leaves a
            third fewer detections on coco_dev at the same AP.
        backend: "torch" or "onnxruntime" (Stage I and II in ONNX Runtime; decoding is the same).
        onnx_dir: with backend="onnxruntime", a directory written by `xnect-export onnx`; weights,
            backbone and random_init are then unused. Without it, the torch networks are exported
            in memory when the estimator is built.
        onnx_threads: ONNX Runtime intra-op threads (None: its default).
        dynconv: False (dense), True / "learned" (the weights' mask unit), "motion" (motion
            against a learned background, static cameras) or "auto" (learned if the weights have
            a mask unit, else motion).
        dynconv_budget: with learned masks, the largest active share of the frame.
        dynconv_margin: with motion masks, how many stride-8 cells around the motion are computed
            too (default `MotionGate`'s 3): more cells, slower, closer to the dense result.
        flip_test: also run Stage I on the mirrored frame and average the two (pose.tta):
            more accurate 2D at twice the Stage I time (batch processing, evaluation); dense only.
        flip_scale: with flip_test, the mirrored pass runs at this multiple of each test scale's
            size and its maps are resampled before the average: 0.625 costs about 1.6x a single pass
            instead of 2x, but people too small for the mirror fade (default 1: the mirror at full size).
        test_scales: run Stage I at these multiples of input_size and fuse the maps (pose.tta),
            e.g. (1, 0.75, 0.5): more accurate for large people, 2x the Stage I time; dense
            only. Default (1,): one pass.
        precision: Stage I arithmetic on the CPU: "fp32", "bf16" (bfloat16; maps returned as float32)
            or "auto" (default): bf16 where the CPU has bfloat16 instructions (avx512_bf16, AMX;
            about 1.9x faster dense Stage I here, the same coco_dev AP), else fp32.
        torch_thread: build and run the networks on the process's torch thread (torch_thread.py)
            whichever thread calls, so a capture or server thread does not slow torch down (up to
            2x for DynConv). False runs them in the calling thread: for code that also runs torch
            itself on one thread (training, benchmarks; `from_networks` defaults to False).
    """

    def __init__(self, weights: str | Path | None = None, backbone: str = "selecsls60",
                 input_size: tuple[int, int] = (512, 320), device: str = "cpu", fov: float = DEFAULT_FOV_DEG,
                 random_init: bool = False, tracking: bool = True, fit_skeleton: bool = True,
                 threshold: float = 0.1, min_score: float = DEFAULT_MIN_SCORE, backend: str = "torch",
                 onnx_dir: str | Path | None = None, onnx_threads: int | None = None,
                 dynconv: bool | str = False, dynconv_budget: float | None = None, dynconv_margin: int | None = None,
                 flip_test: bool = False, flip_scale: float = 1.0, test_scales: Sequence[float] = (1.0,),
                 precision: str = "auto", torch_thread: bool = True,
                 _networks: tuple[Stage1Net, Stage2Model | None] | None = None, _name: str | None = None):
        self.torch_thread = bool(torch_thread)
        setup = dict(locals())
        del setup["self"], setup["torch_thread"]
        self._on_torch(self._setup, **setup)

    def _on_torch(self, fn, /, *args: Any, **kwargs: Any):
        return on_torch_thread(fn, *args, **kwargs) if self.torch_thread else fn(*args, **kwargs)

    def _setup(self, weights, backbone, input_size, device, fov, random_init, tracking, fit_skeleton, threshold,
               min_score, backend, onnx_dir, onnx_threads, dynconv, dynconv_budget, dynconv_margin, flip_test,
               flip_scale, test_scales, precision, _networks, _name) -> None:
        w, h = input_size
        if w % 16 or h % 16:
            raise ValueError(f"input size {w}x{h}: width and height must be multiples of 16")
        self.input_size = (int(w), int(h))
        self.device = torch.device(device)
        self.fov = float(fov)
        Intrinsics.from_fov(w, h, self.fov)  # validates the fov
        self.threshold = threshold
        if not 0.0 <= float(min_score) < 1.0:
            raise ValueError(f"min_score {min_score}: give a score in [0, 1)")
        self.min_score = float(min_score)
        self.tracking = tracking
        self.fit_skeleton = fit_skeleton and tracking
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.precision = resolve_precision(precision, backend, self.device)
        self._ort = None
        if backend == "onnxruntime" and onnx_dir is not None:
            from .export import OnnxNetworks, providers_for

            self._ort = OnnxNetworks(onnx_dir, threads=onnx_threads, providers=providers_for(device))
            if not self._ort.supports_size(self.input_size):
                w0, h0 = self._ort.input_size
                raise ValueError(f"input size {w}x{h}: the ONNX model in {onnx_dir} was exported for {w0}x{h0} "
                                 "with a fixed size")
            self.stage1, self.stage2 = None, None
            self.model_name = self._ort.model_name
        elif _networks is not None:
            self.stage1, self.stage2 = _networks
            self.model_name = _name or f"{self.stage1.cfg.backbone} (in training)"
        elif random_init:
            # a mask unit when learned masks are asked for; "auto" then means motion, as for the bundled weights
            self.stage1 = Stage1Net(Stage1Config(backbone=backbone, dynconv=dynconv is True or dynconv == "learned"))
            self.stage2 = None
            self.model_name = f"{backbone} (random init, untrained)"
        else:
            path = Path(weights) if weights is not None else default_weights_path()
            if not path.is_file():
                hint = ("the bundled default weights are missing from models/" if weights is None
                        else "check the path")
                raise FileNotFoundError(f"weights file {str(path)!r} not found ({hint}); "
                                        "pass random_init=True / --random-weights for an untrained network")
            self.stage1, self.stage2 = load_weights(path)
            self.model_name = path.stem
        if self.stage1 is not None:
            self.stage1.to(self.device).eval()
            self.stage1.bf16_inference = self.precision == "bf16"
        self.dynconv = "learned" if dynconv is True else (dynconv or False)
        self._gate = None
        self._gate_kw = {}
        self._configure_dynconv(dynconv_budget, dynconv_margin)
        self.flip_test = bool(flip_test)
        if not 0.0 < float(flip_scale) <= 1.0:
            raise ValueError(f"flip scale {flip_scale}: give a factor in (0, 1]")
        self.flip_scale = float(flip_scale)
        self.test_scales = tuple(float(s) for s in test_scales)
        if not self.test_scales:
            raise ValueError("test_scales: give at least one scale")
        self._scale_sizes = list(dict.fromkeys(scaled_size(self.input_size, s) for s in self.test_scales))
        if (self.flip_test or self._scale_sizes != [self.input_size]) and self.dynconv:
            raise ValueError("flip test and test scales run Stage I on whole frames: they cannot be combined "
                             "with dynconv")
        if self.stage2 is not None:
            self.stage2.to(self.device).eval()
        if backend == "onnxruntime" and self._ort is None:
            from .export import OnnxNetworks, providers_for

            self._ort = OnnxNetworks.from_networks(self.stage1, self.stage2, self.input_size, self.model_name,
                                                   threads=onnx_threads, providers=providers_for(device))
        # the flip test's mirror size for each test scale's size
        self._mirror_sizes = {sz: scaled_size(sz, self.flip_scale) if self.flip_scale != 1.0 else sz
                              for sz in self._scale_sizes} if self.flip_test else {}
        sizes = set(self._scale_sizes) | set(self._mirror_sizes.values())
        if self._ort is not None and not all(self._ort.supports_size(sz) for sz in sizes):
            raise ValueError(f"test scales: the ONNX model in {onnx_dir} was exported for one fixed size")
        self._frame_index = 0
        self._stream: Stage3Stream | None = None
        self.reset()

    def _configure_dynconv(self, budget: float | None, margin: int | None = None) -> None:
        """dynconv: False (dense), True / "learned" (the weights' mask unit), "motion" (a causal
        motion mask on a static camera; see motion_mask.py) or "auto": motion masks for a video
        stream (tracking on), the mask unit for independent images or when a budget is given.
        On vtest.avi motion masks (margin 3) run Stage I 2.3-2.7x faster at OKS 0.88-0.94 against the
        dense result on the people both find (the cells around the computed ones hold the
        background's values); the mask unit, whose skipped cells hold zeros, 1.5x at 0.81. On
        single images only the mask unit works."""
        mode = self.dynconv
        if mode == "auto":
            has_unit = self.stage1 is not None and bool(self.stage1.cfg.dynconv)
            learned = has_unit and (not self.tracking or budget is not None)
            mode = self.dynconv = "learned" if learned else "motion"
            if mode == "motion" and budget is not None:
                raise ValueError(f"the weights {self.model_name!r} have no DynConv mask unit, and a budget "
                                 "applies to learned masks only")
        if budget is not None and not 0.0 < float(budget) <= 1.0:
            raise ValueError(f"DynConv budget {budget}: give the largest active share of the frame, in (0, 1]")
        if margin is not None and (mode != "motion" or not 0 <= int(margin) <= 16):
            raise ValueError(f"DynConv margin {margin}: for motion masks only, 0 to 16 cells")
        if not mode:
            if budget is not None:
                raise ValueError("a DynConv budget needs DynConv on (--dynconv)")
            if self.stage1 is not None and self.stage1.cfg.dynconv:
                self.stage1.set_sparse(False, mask_unit=False)  # weights with a mask unit, run dense
            return
        if mode not in ("learned", "motion"):
            raise ValueError(f"DynConv mask {mode!r}: choose auto, learned or motion")
        if self.backend != "torch":
            raise ValueError("DynConv sparse execution runs with the torch backend, not " + self.backend)
        if self.device.type != "cpu":
            raise ValueError("DynConv sparse execution is implemented for the CPU (masks run dense on GPUs)")
        if mode == "motion":
            if budget is not None:
                raise ValueError("a DynConv budget applies to learned masks, not motion masks")
            if not self.tracking:
                raise ValueError("motion masks need a video or camera stream, not independent images")
            self._gate_kw = {} if margin is None else {"margin": int(margin)}
            self._gate = MotionGate(**self._gate_kw)
            return
        if not self.stage1.cfg.dynconv:
            raise ValueError(f"the weights {self.model_name!r} have no DynConv mask unit; train one with "
                             "`xnect-train stage1 --dynconv --init WEIGHTS`, or use motion masks on a static "
                             "camera (--dynconv --dynconv-mask motion)")
        self.stage1.dynconv_max_active = None if budget is None else float(budget)
        self.stage1.set_sparse(True)

    def _gate_batch(self, inputs: list[np.ndarray], stream: Hashable | None = None) -> bool:
        """Motion masks for a batch of consecutive frames of one stream; False when it must run
        dense (warm-up)."""
        gate = self._gate if stream is None else self._stream_gate(stream)
        masks = [gate.update(img) for img in inputs]
        if any(m is None for m in masks):
            self.stage1.set_sparse(False, mask_override=None, mask_unit=False)
            return False
        if gate.background_due():
            gate.network_background = gate.background_tensor(self.device)
        self.stage1.set_sparse(True, mask_override=torch.stack(masks)[:, None].to(self.device),
                               background=gate.network_background, first_block=FIRST_MASKED_BLOCK)
        return True

    def _stream_gate(self, stream: Hashable) -> MotionGate:
        gate = self._stream_gates.get(stream)
        if gate is None:
            gate = self._stream_gates[stream] = MotionGate(**self._gate_kw)
        return gate

    def forget_stream(self, stream: Hashable) -> None:
        """Drop the motion-mask state of one stream of `detect_batch(..., streams=...)` (a client
        that left or restarts); its next frame warms up again."""
        self._stream_gates.pop(stream, None)

    # -- construction helpers -----------------------------------------------------------------
    @classmethod
    def from_networks(cls, stage1: Stage1Net, stage2: Stage2Model | None, **kw: Any) -> "PoseEstimator":
        """Networks the caller built; they run in the calling thread unless torch_thread=True."""
        kw.setdefault("torch_thread", False)
        return cls(_networks=(stage1, stage2), **kw)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kw: Any) -> "PoseEstimator":
        """A Stage I training checkpoint (runs/.../last.pt), without Stage II: the moving average of
        its weights when it keeps one (what `xnect-train export` takes)."""
        net, step = on_torch_thread(_load_checkpoint, path) if kw.get("torch_thread", True) else _load_checkpoint(path)
        return cls(_networks=(net, None), _name=f"{Path(path).parent.name}@{step}", **kw)

    def reset(self) -> None:
        """Start a new sequence: forget identities and filter state."""
        self._frame_index = 0
        self._stream = self.new_stream() if self.tracking else None
        if getattr(self, "_gate", None) is not None:
            self._gate.reset()
        self._stream_gates: dict[Hashable, MotionGate] = {}

    def new_stream(self) -> "Stage3Stream":
        """Stage III state for one video stream (a server keeps one per client)."""
        return Stage3Stream(fit_skeleton=self.fit_skeleton)

    def intrinsics_for(self, width: int, height: int) -> Intrinsics:
        return Intrinsics.from_fov(width, height, self.fov)

    def settings(self) -> dict[str, Any]:
        """How this estimator runs (recorded in the JSON-lines meta record, so outputs made with
        --flip, --scales, --dynconv ... say so)."""
        return {"input_wh": list(self.input_size), "backend": self.backend, "device": str(self.device),
                "dynconv": self.dynconv or False, "flip_test": self.flip_test,
                "flip_scale": self.flip_scale,
                "test_scales": list(self.test_scales), "min_score": self.min_score, "fov_deg": self.fov,
                "precision": self.precision}

    # -- inference ------------------------------------------------------------------------------
    def detect_batch(self, frames: Sequence[np.ndarray],
                     streams: Sequence[Hashable] | None = None) -> list[FrameResult]:
        """Stage I + II and root translation for several frames at once; no tracking.

        streams: the stream (client, camera) of each frame, for motion masks
        (dynconv="motion"): each stream then has its own motion gate and background, so frames of
        several static cameras can share a batch (`forget_stream` drops one). Without it, all
        frames are taken as consecutive frames of one stream.
        """
        return self._on_torch(self._detect_batch, frames, streams)

    @torch.inference_mode()
    def _detect_batch(self, frames: Sequence[np.ndarray],
                      streams: Sequence[Hashable] | None) -> list[FrameResult]:
        if not frames:
            return []
        if streams is not None and len(streams) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(streams)} streams")
        t0 = time.perf_counter()
        boxes, inputs = [], []
        for f in frames:
            if f is None or f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
                raise ValueError("frames must be H x W x 3 uint8 BGR images")
            img, lb = letterbox(f, self.input_size)
            inputs.append(img)
            boxes.append(lb)
        masks = None
        if self._ort is not None or (self._gate is None and not self.dynconv):
            t1 = time.perf_counter()
            hm, paf, enc = self._dense_maps(inputs)
        elif self._gate is not None and streams is not None:
            # motion masks per stream: each frame is its own sparse pass with its stream's background
            t1 = time.perf_counter()
            maps, mask_rows = [], []
            for img, stream in zip(inputs, streams):
                gated = self._gate_batch([img], stream)
                maps.append(self.stage1(self._to_tensor([img])))
                mask_rows.append(self._last_masks(gated, 1))
            hm, paf, enc = _to_numpy(torch.cat(m) for m in zip(*maps))
            masks = np.concatenate(mask_rows)
        else:
            gated = self._gate_batch(inputs) if self._gate is not None else None
            x = self._to_tensor(inputs)
            t1 = time.perf_counter()
            out = self.stage1(x)
            masks = self._last_masks(gated, len(inputs))
            hm, paf, enc = _to_numpy(out)
        t2 = time.perf_counter()
        results = []
        for i, f in enumerate(frames):
            t_dec = time.perf_counter()
            people = self._decode_one(hm[i], paf[i], enc[i], boxes[i], f.shape[1], f.shape[0])
            t_end = time.perf_counter()
            fh, fw = f.shape[:2]
            results.append(FrameResult(
                frame_index=0, time_s=0.0, image_size=(fw, fh), people=people,
                intrinsics=self.intrinsics_for(fw, fh),
                timings_ms={"preprocess": (t1 - t0) * 1000 / len(frames), "stage1": (t2 - t1) * 1000 / len(frames),
                            "decode": (t_end - t_dec) * 1000}))
            if masks is not None:
                results[-1].dynconv_mask = boxes[i].mask_to_frame(masks[i], fw, fh)
                results[-1].computed_share = float((masks[i] > 0).mean())
        return results

    def _one_pass(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dense Stage I maps (heatmaps, PAFs, encodings) of letterboxed images, either backend."""
        if self._ort is not None:
            return self._ort.stage1(np.ascontiguousarray(np.stack(inputs).transpose(0, 3, 1, 2), dtype=np.float32))
        return _to_numpy(self.stage1(self._to_tensor(inputs)))

    def _dense_maps(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dense Stage I maps at the input size: with flip test averaged over each image and its
        mirror (the mirror at flip_scale x the size), with test scales fused over the scales
        (pose.tta.fuse_scales)."""
        w, h = self.input_size
        per_scale = []
        for size in self._scale_sizes:
            batch = inputs if size == self.input_size else [
                cv2.resize(img, size, interpolation=cv2.INTER_AREA if size[0] < w else cv2.INTER_LINEAR)
                for img in inputs]
            mirror_size = self._mirror_sizes.get(size)
            if mirror_size == size:
                batch = batch + [np.ascontiguousarray(img[:, ::-1]) for img in batch]
            maps = self._one_pass(batch)
            if mirror_size == size:
                maps = average_with_mirror(*maps)
            elif mirror_size is not None:
                mirrored = [np.ascontiguousarray(cv2.resize(img, mirror_size, interpolation=cv2.INTER_AREA)[:, ::-1])
                            for img in batch]
                back = resize_maps(unmirror_maps(*self._one_pass(mirrored)), (size[0] // STRIDE, size[1] // STRIDE))
                maps = tuple((a + b) * 0.5 for a, b in zip(maps, back))
            if size != self.input_size:
                maps = resize_maps(maps, (w // STRIDE, h // STRIDE))
            per_scale.append(maps)
        return fuse_scales(per_scale)

    def _to_tensor(self, inputs: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(inputs)).to(self.device).permute(0, 3, 1, 2).float()

    def _last_masks(self, gated: bool | None, n: int) -> np.ndarray | None:
        """The stride-8 DynConv masks (N x H/8 x W/8) of the last Stage I forward, if it had any."""
        net = self.stage1
        if gated is not None:  # motion masks; all cells while warming up
            if not gated:
                w, h = self.input_size
                return np.ones((n, h // STRIDE, w // STRIDE), np.float32)
            return net.sparse_stats.mask[:, 0].float().cpu().numpy()
        if not net.cfg.dynconv or not self.dynconv:
            return None
        stats = net.sparse_stats
        mask = stats.mask if stats is not None else net.last_mask
        return None if mask is None else mask[:, 0].float().cpu().numpy()

    def __call__(self, frame_bgr: np.ndarray, timestamp: float | None = None) -> FrameResult:
        res = self.detect_batch([frame_bgr])[0]
        res.frame_index = self._frame_index
        res.time_s = float(timestamp) if timestamp is not None else float(self._frame_index) / 30.0
        self._frame_index += 1
        if self._stream is not None:
            self._stream.process(res)
        return res

    def _decode_one(self, hm: np.ndarray, paf: np.ndarray, enc: np.ndarray, lb: Letterbox,
                    fw: int, fh: int) -> list[Person]:
        from .pose.decode import decode

        found = decode(hm, paf, enc, stride=STRIDE, peak_threshold=self.threshold,
                       grouping=GroupingConfig(min_score=self.min_score))
        if len(found) == 0:
            return []
        kp3d_m = found.kp3d_rel_mm / 1000.0  # P x 21 x 3, NaN where unread
        valid = found.kp3d_valid
        if self._ort is not None and self._ort.has_stage2:
            kp3d_m = self._ort.stage2(found.stage2_in, np.nan_to_num(kp3d_m),
                                      valid.astype(np.float32)).astype(np.float64)
        elif self.stage2 is not None:
            with torch.inference_mode():
                lifted = self.stage2(torch.from_numpy(found.stage2_in).float().to(self.device),
                                     torch.from_numpy(np.nan_to_num(kp3d_m)).float().to(self.device),
                                     torch.from_numpy(valid.astype(np.float32)).to(self.device))
            kp3d_m = lifted.cpu().numpy().astype(np.float64)
        kp3d_mm = kp3d_m * 1000.0
        kp2d = found.kp2d.astype(np.float64).copy()
        missing = ~(kp2d[..., 2] > 0)
        kp2d[..., :2] = lb.to_frame(kp2d[..., :2])
        kp2d[missing, :2] = np.nan
        kp2d[missing, 2] = 0.0
        intr = self.intrinsics_for(fw, fh)
        roots = _solve_roots(kp3d_mm, kp2d, intr)
        people = []
        for i in range(len(found)):
            cam = kp3d_mm[i] + roots[i][None]
            people.append(Person(track_id=-1, score=float(found.scores[i]), kp2d=kp2d[i],
                                 kp3d_rel_mm=kp3d_mm[i], kp3d_cam_mm=cam))
        return people


class Stage3Stream:
    """Identity tracking, One Euro smoothing and skeleton fitting for one stream of frames."""

    def __init__(self, fit_skeleton: bool = True):
        from .pose.tracking import Tracker

        self.fit_skeleton = fit_skeleton
        self.tracker = Tracker()

    def process(self, res: FrameResult) -> FrameResult:
        """Tracks, smooths and fits res.people in place (frame order matters); returns res."""
        t0 = time.perf_counter()
        res.people = self.tracker.update(res.people, res.time_s, res.intrinsics, fit_skeleton=self.fit_skeleton)
        res.timings_ms["stage3"] = (time.perf_counter() - t0) * 1000
        return res


def _to_numpy(maps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage I output (tensors) -> float32 numpy heatmaps, PAFs, encodings."""
    return tuple(t.float().cpu().numpy() for t in maps)


def _solve_roots(kp3d_mm: np.ndarray, kp2d: np.ndarray, intr: Intrinsics) -> np.ndarray:
    from .pose.root import solve_root_translation

    roots, ok = solve_root_translation(kp3d_mm, kp2d, intr)
    return np.where(np.asarray(ok)[:, None], roots, np.nan)


def _load_checkpoint(path: str | Path) -> tuple[Stage1Net, int]:
    from .train.export import read_checkpoint

    weights, cfg, ck = read_checkpoint(path)  # the weights `xnect-train export` takes
    net = Stage1Net(Stage1Config.from_dict(cfg))
    net.load_state_dict(weights)
    return net, int(ck.get("step", 0))


def load_weights(path: str | Path) -> tuple[Stage1Net, Stage2Model | None]:
    """Networks from a weights file written by `xnect-train export`."""
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{path}: not a readable xnect weights file ({type(e).__name__})") from None
    if not isinstance(doc, dict) or "stage1" not in doc:
        raise ValueError(f"{path}: not an xnect weights file (no 'stage1' entry)")
    s1 = Stage1Net(Stage1Config.from_dict(doc.get("stage1_config", {})))
    s1.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in doc["stage1"].items()})
    s2 = None
    if "stage2" in doc:
        s2 = build_stage2(doc.get("stage2_config", {}))
        s2.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in doc["stage2"].items()})
    return s1, s2
