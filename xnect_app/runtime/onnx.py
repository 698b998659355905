"""ONNX export of the XNect networks, and the ONNX Runtime runtime for the exported files.

    meta = export_onnx(stage1, stage2, "onnx_out", input_size=(512, 320), model_name="xnect60")
    nets = OnnxNetworks("onnx_out")                 # sessions + the sidecar
    hm, paf, enc = nets.stage1(images_nchw_float)   # the same maps Stage1Net gives

An export directory holds `stage1.onnx` (dense Stage I: BGR float 0..255, N x 3 x H x W in;
heatmaps, PAFs and 3D encodings at stride 8 out; dynamic batch and, by default, dynamic H/W in
multiples of 16), `stage2.onnx` when the model has a Stage II (dynamic number of people) and
`xnect_onnx.json`, a sidecar with the input convention, the joint sets and the decoding recipe,
so the files are usable without this package. With it, `PoseEstimator(ModelConfig(backend="onnxruntime",
onnx_dir=...))` runs them end to end through the same numpy decoding as the torch backend
(`OnnxRunner`, `OnnxLifter`).

The graphs are traced with the TorchScript-based exporter (`dynamo=False`): it needs only `onnx`,
and the networks have no data-dependent control flow apart from Stage II's empty-batch shortcut,
which the runner handles itself. ONNX and ONNX Runtime are an optional extra: `pip install
'xnect_app[onnx]'`.
"""
from __future__ import annotations

import copy
import datetime
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import skeleton
from ..nn.stage1 import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, STRIDE, Stage1Net
from ..nn.stage2 import Stage2Model
from .maps import StageOneMaps
from .preprocess import letterbox

_logger = logging.getLogger(__name__)

__all__ = ["ONNX_FORMAT", "STAGE1_FILE", "STAGE2_FILE", "META_FILE", "DEFAULT_OPSET", "OnnxUnavailable",
           "export_onnx", "stage1_onnx_bytes", "stage2_onnx_bytes", "read_meta", "OnnxNetworks",
           "compare_with_torch", "providers_for", "OnnxRunner", "OnnxLifter", "INT8_CALIBRATION_METHODS",
           "calibration_images", "quantize_stage1_int8"]

ONNX_FORMAT = "xnect_app.onnx/1"
STAGE1_FILE = "stage1.onnx"
STAGE2_FILE = "stage2.onnx"
META_FILE = "xnect_onnx.json"
DEFAULT_OPSET = 17
STAGE1_INPUTS = ("image",)
STAGE1_OUTPUTS = ("heatmaps", "pafs", "enc3d")
STAGE2_INPUTS = ("joint_feats", "readout", "readout_valid")
STAGE2_OUTPUTS = ("pose3d",)


class OnnxUnavailable(ImportError):
    """onnx / onnxruntime is not installed (the optional extra)."""


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise OnnxUnavailable(f"{module} is not installed; install the extra: pip install 'xnect_app[onnx]'") \
            from None


# --------------------------------------------------------------------------- export

class _Stage1Graph(nn.Module):
    """Stage1Net with a plain tuple output (ONNX outputs are positional)."""

    def __init__(self, net: Stage1Net):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(self.net(image))


def _trace_to_bytes(module: nn.Module, args: tuple, input_names: Sequence[str], output_names: Sequence[str],
                    dynamic_axes: dict, opset: int) -> bytes:
    # Export a CPU copy in eval mode: the exporter restores the module's training flag afterwards,
    # and the caller's networks (maybe on a GPU, maybe in use) stay untouched.
    module = copy.deepcopy(module).cpu().float().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic_axes, do_constant_folding=True)
    return buf.getvalue()


def stage1_onnx_bytes(net: Stage1Net, input_size: tuple[int, int], dynamic_hw: bool = True,
                      opset: int = DEFAULT_OPSET) -> bytes:
    """Stage I as an ONNX model (bytes); batch always dynamic, H/W dynamic when dynamic_hw."""
    w, h = input_size
    spatial_in = {2: "height", 3: "width"} if dynamic_hw else {}
    spatial_out = {2: "height_8", 3: "width_8"} if dynamic_hw else {}
    axes = {"image": {0: "batch", **spatial_in}}
    axes.update({name: {0: "batch", **spatial_out} for name in STAGE1_OUTPUTS})
    example = torch.full((1, 3, h, w), 114.0)
    net = copy.deepcopy(net)
    if hasattr(net, "set_sparse"):
        # DynConv: the sparse executor gathers active cells in Python and cannot be traced, and a
        # masked-dense graph would compute every cell anyway: export the dense network.
        net.set_sparse(False, mask_override=None, mask_unit=False)
    return _trace_to_bytes(_Stage1Graph(net), (example,), STAGE1_INPUTS, STAGE1_OUTPUTS, axes, opset)


def stage2_onnx_bytes(net: Stage2Model, opset: int = DEFAULT_OPSET) -> bytes:
    """Stage II as an ONNX model (bytes) with a dynamic number of people (at least 1)."""
    c = net.cfg
    example = (torch.zeros(2, c.num_joints_2d, c.enc_chs + 3), torch.zeros(2, c.num_joints_3d, 3),
               torch.ones(2, c.num_joints_3d))
    axes = {name: {0: "people"} for name in STAGE2_INPUTS + STAGE2_OUTPUTS}
    return _trace_to_bytes(net, example, STAGE2_INPUTS, STAGE2_OUTPUTS, axes, opset)


def _sidecar(stage1: Stage1Net, stage2: Stage2Model | None, input_size: tuple[int, int], model_name: str,
             dynamic_hw: bool, opset: int) -> dict[str, Any]:
    w, h = input_size
    c1 = stage1.cfg
    meta: dict[str, Any] = {
        "format": ONNX_FORMAT,
        "model_name": model_name,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "opset": opset,
        "input_size": [w, h],
        "stride": STRIDE,
        "stage1": {
            "file": STAGE1_FILE,
            "config": c1.to_dict(),
            "dynamic_batch": True,
            "dynamic_hw": dynamic_hw,
            "dynconv": "dense graph (the mask unit is not exported)" if getattr(c1, "dynconv", False) else None,
            "input": {"name": "image", "shape": ["batch", 3, "height" if dynamic_hw else h, "width" if dynamic_hw else w],
                      "dtype": "float32",
                      "layout": "NCHW, BGR channel order, raw pixel values 0..255 (normalised inside the graph)",
                      "size_rule": "height and width multiples of 16",
                      "letterbox": "resize keeping aspect ratio, pad centred with value 114"},
            "normalisation_inside": {"mean_bgr": [m * 255 for m in IMAGENET_MEAN_RGB[::-1]],
                                     "std_bgr": [s * 255 for s in IMAGENET_STD_RGB[::-1]]},
            "outputs": {
                "heatmaps": f"batch x {c1.num_joints_2d} x H/8 x W/8, one per JOINTS_2D joint",
                "pafs": f"batch x {c1.num_pafs} x H/8 x W/8, (x, y) per LIMBS_2D limb",
                "enc3d": f"batch x {c1.num_enc3d} x H/8 x W/8, (x, y, z) per JOINTS_3D joint, root-relative metres",
            },
        },
        "joints_2d": list(skeleton.JOINTS_2D),
        "joints_3d": list(skeleton.JOINTS_3D),
        "limbs_2d": [list(limb) for limb in skeleton.LIMBS_2D],
        "parents_3d": list(skeleton.PARENTS_3D),
        "root_3d": skeleton.ROOT_3D,
        "joint_3d_of_2d": list(skeleton.JOINT_3D_OF_2D),
        "decoding": ("xnect_app.pose.decode.decode(heatmaps[i], pafs[i], enc3d[i], stride=8): heatmap peaks, "
                     "PAF grouping, 3D read-out; map cell c -> input pixel (c + 0.5) * 8 - 0.5"),
        "stage2": None,
    }
    if stage2 is not None:
        c2 = stage2.cfg
        meta["stage2"] = {
            "file": STAGE2_FILE,
            "config": c2.to_dict(),
            "inputs": {"joint_feats": f"people x {c2.num_joints_2d} x {c2.enc_chs + 3} "
                                      "(xnect_app.pose.readout.stage2_inputs)",
                       "readout": f"people x {c2.num_joints_3d} x 3 root-relative metres, 0 where invalid",
                       "readout_valid": f"people x {c2.num_joints_3d}, 1.0 / 0.0"},
            "outputs": {"pose3d": f"people x {c2.num_joints_3d} x 3 root-relative metres"},
            "note": "people must be at least 1; skip the call for an empty frame",
        }
    return meta


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def export_onnx(stage1: Stage1Net, stage2: Stage2Model | None, out_dir: str | Path, input_size: tuple[int, int],
                model_name: str, dynamic_hw: bool = True, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Write stage1.onnx, stage2.onnx (if stage2) and the xnect_onnx.json sidecar; returns the sidecar.

    Every file is written to a temporary name and renamed; the sidecar goes last, so a directory
    with a sidecar is complete. A stale stage2.onnx from an earlier export is removed.
    """
    _require("onnx")
    w, h = input_size
    if w % 16 or h % 16 or w < 32 or h < 32:
        raise ValueError(f"input size {w}x{h}: width and height must be multiples of 16, at least 32")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    _logger.info("exporting Stage I (%dx%d, dynamic batch%s)", w, h, ", H, W" if dynamic_hw else "")
    _write_atomic(out / STAGE1_FILE, stage1_onnx_bytes(stage1, (w, h), dynamic_hw, opset))
    if stage2 is not None:
        _logger.info("exporting Stage II (dynamic number of people)")
        _write_atomic(out / STAGE2_FILE, stage2_onnx_bytes(stage2, opset))
    elif (out / STAGE2_FILE).exists():
        (out / STAGE2_FILE).unlink()
    meta = _sidecar(stage1, stage2, (w, h), model_name, dynamic_hw, opset)
    _write_atomic(out / META_FILE, (json.dumps(meta, indent=1) + "\n").encode())
    return meta


INT8_CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def calibration_images(folder: str | Path, n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Up to n images of a folder (or its images/ subfolder), letterboxed to size (w, h), as the
    1 x 3 x H x W float32 batches Stage I takes."""
    import cv2

    folder = Path(folder)
    exts = (".jpg", ".jpeg", ".png", ".bmp")
    files = sorted(p for p in (folder / "images").glob("*") if p.suffix.lower() in exts) or \
        sorted(p for p in folder.glob("*") if p.suffix.lower() in exts)
    batches = []
    for p in files[:n]:
        img = cv2.imread(str(p))
        if img is not None:
            batches.append(letterbox(img, size)[0].transpose(2, 0, 1)[None].astype(np.float32))
    if not batches:
        raise ValueError(f"no calibration images (jpg, png, bmp) in {folder}")
    return batches


def quantize_stage1_int8(onnx_dir: str | Path, calibration: list[np.ndarray], method: str = "entropy") -> dict[str, Any]:
    """Replace the Stage I model of an export directory (static height and width) by a static int8
    model (QDQ, per-channel int8 weights, uint8 activations) calibrated on `calibration`; the
    sidecar records it. Returns the sidecar.

    Only the SelecSLS core is quantised; the Stage I heads stay fp32. The heads are
    ill-conditioned: simulated int8 (QDQ in float, no kernel involved) of the single 3x3 conv
    b2d_conv1 moves the heatmaps by 58% of their range, while the whole core moves them by ~10%.
    The grouped ConvTranspose upsamplers stay fp32 as well (convs only are quantised).
    """
    import contextlib
    import sys

    onnx = _require("onnx")
    _require("onnxruntime")
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    if method not in INT8_CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r}: choose {', '.join(INT8_CALIBRATION_METHODS)}")
    d = Path(onnx_dir)
    meta = read_meta(d)
    if meta["stage1"].get("dynamic_hw"):
        raise ValueError("int8 needs an export with a static height and width (--static-size)")
    if meta["stage1"].get("int8"):
        raise ValueError(f"{d}: Stage I is already int8")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"image": x}

    src = d / meta["stage1"]["file"]
    pre = d / "stage1.pre.onnx"
    dst = d / "stage1.int8.onnx"
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        keep_fp32 = [n.name for n in onnx.load(str(pre)).graph.node
                     if n.op_type == "Conv" and "/core/" not in n.name]
        with contextlib.redirect_stdout(sys.stderr):  # the calibrators print progress
            quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv"], nodes_to_exclude=keep_fp32,
                            calibrate_method=getattr(CalibrationMethod, INT8_CALIBRATION_METHODS[method]))
        os.replace(dst, src)
    finally:
        for f in (pre, dst):
            f.unlink(missing_ok=True)
    meta["stage1"]["int8"] = {"quantised": "SelecSLS core convolutions (heads and upsamplers fp32)",
                              "format": "QDQ, per-channel int8 weights, uint8 activations",
                              "calibration_images": len(calibration), "calibration_method": method}
    meta["model_name"] = f"{meta.get('model_name', 'onnx')} int8"
    _write_atomic(d / META_FILE, (json.dumps(meta, indent=1) + "\n").encode())
    return meta


def read_meta(onnx_dir: str | Path) -> dict[str, Any]:
    """The sidecar of an export directory; ValueError/FileNotFoundError for anything else."""
    d = Path(onnx_dir)
    path = d / META_FILE
    if not d.is_dir():
        raise FileNotFoundError(f"ONNX directory {str(d)!r} not found")
    if not path.is_file():
        raise FileNotFoundError(f"{d}: no {META_FILE} (not made by `xnect-export onnx`)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable sidecar ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != ONNX_FORMAT:
        raise ValueError(f"{path}: not an {ONNX_FORMAT} sidecar")
    return meta


# --------------------------------------------------------------------------- runtime

def _session(model: bytes | str, threads: int | None, providers: Sequence[str] | None):
    ort = _require("onnxruntime")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    return ort.InferenceSession(model, sess_options=opts, providers=chosen)


def providers_for(device: str) -> list[str]:
    """ONNX Runtime providers for a torch-style device string (CUDA when asked and available)."""
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if str(device).startswith("cuda") \
        else ["CPUExecutionProvider"]


class OnnxNetworks:
    """ONNX Runtime sessions for Stage I (and Stage II) with the torch networks' calling convention.

    Args:
        onnx_dir: a directory written by `export_onnx` / `xnect-export onnx`.
        threads: intra-op threads for ONNX Runtime (None: its default, one per physical core).
        providers: ONNX Runtime execution providers, in order of preference.
    """

    def __init__(self, onnx_dir: str | Path | None = None, threads: int | None = None,
                 providers: Sequence[str] | None = None, *, _models: tuple[bytes, bytes | None, dict] | None = None):
        if _models is not None:
            s1, s2, self.meta = _models
        else:
            d = Path(onnx_dir)
            self.meta = read_meta(d)
            s1 = str(d / self.meta["stage1"]["file"])
            s2 = str(d / self.meta["stage2"]["file"]) if self.meta.get("stage2") else None
            for f in (s1, s2):
                if f is not None and not Path(f).is_file():
                    raise FileNotFoundError(f"{f}: missing from the ONNX directory")
        try:
            self._s1 = _session(s1, threads, providers)
            self._s2 = _session(s2, threads, providers) if s2 is not None else None
        except OnnxUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - a corrupt file is a user error, say which
            raise ValueError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0]}") from None
        self.model_name = str(self.meta.get("model_name", "onnx"))
        self.input_size = tuple(self.meta["input_size"])
        self.dynamic_hw = bool(self.meta["stage1"].get("dynamic_hw", False))

    @classmethod
    def from_networks(cls, stage1: Stage1Net, stage2: Stage2Model | None, input_size: tuple[int, int],
                      model_name: str = "in-memory", dynamic_hw: bool = True, opset: int = DEFAULT_OPSET,
                      threads: int | None = None, providers: Sequence[str] | None = None) -> "OnnxNetworks":
        """Export in memory (nothing on disk) and open sessions on the result."""
        _require("onnx")
        s1 = stage1_onnx_bytes(stage1, input_size, dynamic_hw, opset)
        s2 = stage2_onnx_bytes(stage2, opset) if stage2 is not None else None
        meta = _sidecar(stage1, stage2, input_size, model_name, dynamic_hw, opset)
        return cls(threads=threads, providers=providers, _models=(s1, s2, meta))

    @property
    def has_stage2(self) -> bool:
        return self._s2 is not None

    def supports_size(self, size: tuple[int, int]) -> bool:
        return self.dynamic_hw or tuple(size) == self.input_size

    def stage1(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """images: N x 3 x H x W float32 BGR 0..255 -> (heatmaps, pafs, enc3d) at stride 8."""
        x = np.ascontiguousarray(images, dtype=np.float32)
        hm, paf, enc = self._s1.run(list(STAGE1_OUTPUTS), {"image": x})
        return hm, paf, enc

    def stage2(self, joint_feats: np.ndarray, readout: np.ndarray, readout_valid: np.ndarray) -> np.ndarray:
        """Stage II on P people (P may be 0) -> P x 21 x 3 root-relative metres."""
        if self._s2 is None:
            raise RuntimeError("this export has no Stage II")
        p = len(joint_feats)
        if p == 0:
            return np.zeros((0, skeleton.NUM_JOINTS_3D, 3), np.float32)
        feeds = {"joint_feats": np.ascontiguousarray(joint_feats, dtype=np.float32),
                 "readout": np.ascontiguousarray(readout, dtype=np.float32),
                 "readout_valid": np.ascontiguousarray(readout_valid, dtype=np.float32)}
        return self._s2.run(list(STAGE2_OUTPUTS), feeds)[0]


def compare_with_torch(nets: OnnxNetworks, stage1: Stage1Net, stage2: Stage2Model | None,
                       images: np.ndarray, people: int = 3, seed: int = 0) -> dict[str, dict[str, float]]:
    """ONNX Runtime vs torch per output: {name: {"max_abs_diff", "max_abs_ref"}}, Stage I on the
    given images (N x 3 x H x W float32), Stage II on `people` random inputs. For export checks."""
    s1 = copy.deepcopy(stage1).cpu().float().eval()
    with torch.no_grad():
        ref = [t.numpy() for t in s1(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))]
    got = list(nets.stage1(images))
    names = list(STAGE1_OUTPUTS)
    if stage2 is not None and nets.has_stage2:
        c = stage2.cfg
        rng = np.random.default_rng(seed)
        feats = rng.normal(size=(people, c.num_joints_2d, c.enc_chs + 3)).astype(np.float32)
        readout = rng.normal(scale=0.3, size=(people, c.num_joints_3d, 3)).astype(np.float32)
        valid = (rng.random((people, c.num_joints_3d)) > 0.2).astype(np.float32)
        s2 = copy.deepcopy(stage2).cpu().float().eval()
        with torch.no_grad():
            ref.append(s2(*(torch.from_numpy(a) for a in (feats, readout, valid))).numpy())
        got.append(nets.stage2(feats, readout, valid))
        names += list(STAGE2_OUTPUTS)
    return {n: {"max_abs_diff": float(np.max(np.abs(a - b))), "max_abs_ref": float(np.max(np.abs(b)))}
            for n, a, b in zip(names, got, ref)}


class OnnxRunner:
    """Stage I in ONNX Runtime behind the runtime's interface (`runtime.maps`)."""

    def __init__(self, nets: OnnxNetworks):
        self.nets = nets

    def __call__(self, images, streams=None) -> StageOneMaps:
        x = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32)
        return StageOneMaps(*self.nets.stage1(x))

    def reset(self) -> None:
        pass

    def forget_stream(self, stream) -> None:
        pass


class OnnxLifter:
    """Stage II in ONNX Runtime."""

    def __init__(self, nets: OnnxNetworks):
        self.nets = nets

    def __call__(self, joint_feats: np.ndarray, readout_m: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return self.nets.stage2(joint_feats, readout_m, valid).astype(np.float64)
