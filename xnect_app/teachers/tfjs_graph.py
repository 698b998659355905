"""Run a TensorFlow.js graph model (``model.json`` + ``.bin`` shards) on torch.

A small interpreter for the ops that Google's MoveNet and BlazePose graphs use. Tensors follow
TensorFlow's layouts (NHWC images, HWIO kernels); convolutions run through torch in
channels-last memory, so the layout costs no copies. Integer tensors are held as int64.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

_DTYPES = {
    "float32": np.float32,
    "int32": np.int32,
    "bool": np.bool_,
}
_TF_DTYPES = {
    "DT_FLOAT": torch.float32,
    "DT_INT32": torch.int64,
    "DT_INT64": torch.int64,
    "DT_BOOL": torch.bool,
}


class GraphError(RuntimeError):
    """The model file uses something this interpreter does not support."""


def _decode_weights(manifest: list[dict], folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for group in manifest:
        blob = b"".join((folder / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            shape = [int(s) for s in spec["shape"]]
            count = math.prod(shape)
            quant = spec.get("quantization")
            if quant:
                qdtype = quant["dtype"]
                if qdtype == "float16":
                    raw = np.frombuffer(blob, np.float16, count, offset)
                    values = raw.astype(np.float32)
                    offset += 2 * count
                elif qdtype in ("uint8", "uint16"):
                    itemsize = 1 if qdtype == "uint8" else 2
                    raw = np.frombuffer(blob, np.uint8 if itemsize == 1 else np.uint16, count, offset)
                    values = raw.astype(np.float32) * quant["scale"] + quant["min"]
                    offset += itemsize * count
                else:
                    raise GraphError(f"unsupported weight quantization {qdtype!r}")
                values = values.astype(_DTYPES[spec["dtype"]])
            else:
                np_dtype = _DTYPES.get(spec["dtype"])
                if np_dtype is None:
                    raise GraphError(f"unsupported weight dtype {spec['dtype']!r}")
                itemsize = np.dtype(np_dtype).itemsize
                values = np.frombuffer(blob, np_dtype, count, offset).copy()
                offset += itemsize * count
            t = torch.from_numpy(np.ascontiguousarray(values).reshape(shape))
            if t.dtype == torch.int32:
                t = t.long()
            tensors[spec["name"]] = t
    return tensors


def _attr(node: dict, key: str, default=None):
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "type" in a:
        return a["type"]
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        return []
    return default


def _ints(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _same_pad(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _conv_padding(node: dict, x: torch.Tensor, kh: int, kw: int, strides, dilations):
    """Explicit (top, bottom, left, right) padding of an NHWC input."""
    padding = _attr(node, "padding")
    if padding == "VALID":
        return 0, 0, 0, 0
    if padding == "SAME":
        t, b = _same_pad(x.shape[1], kh, strides[1], dilations[1])
        l, r = _same_pad(x.shape[2], kw, strides[2], dilations[2])
        return t, b, l, r
    if padding == "EXPLICIT":
        p = _attr(node, "explicit_paddings")
        return p[2], p[3], p[4], p[5]
    raise GraphError(f"unsupported padding {padding!r}")


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _apply_fused(node: dict, y: torch.Tensor, extra: list[torch.Tensor]) -> torch.Tensor:
    """``y`` is NCHW; ``extra`` the fused op arguments (bias, prelu alpha) in TF layout."""
    ops = _attr(node, "fused_ops", []) or []
    args = list(extra)
    for op in ops:
        if op == "BiasAdd":
            y = y + args.pop(0).reshape(1, -1, 1, 1)
        elif op == "Relu":
            y = F.relu(y)
        elif op == "Relu6":
            y = F.hardtanh(y, 0.0, 6.0)
        elif op == "Prelu":
            alpha = args.pop(0).reshape(1, -1, 1, 1)
            y = torch.where(y >= 0, y, y * alpha)
        elif op == "LeakyRelu":
            y = F.leaky_relu(y, _attr(node, "leakyrelu_alpha", 0.2))
        elif op == "Sigmoid":
            y = torch.sigmoid(y)
        elif op == "Elu":
            y = F.elu(y)
        else:
            raise GraphError(f"unsupported fused op {op!r}")
    return y


class TfjsGraph:
    """A loaded graph model. ``run({"input": x}, ["Identity"])`` returns the named outputs.

    Any node can be fetched by name (``"node"`` or ``"node:1"`` for a second output), which
    exposes the dense maps inside a model, not just its signature outputs.
    """

    def __init__(self, model_json: str | Path):
        path = Path(model_json)
        spec = json.loads(path.read_text())
        if spec.get("format") != "graph-model":
            raise GraphError(f"{path}: not a tfjs graph model (format {spec.get('format')!r})")
        self.path = path
        self.nodes: dict[str, dict] = {n["name"]: n for n in spec["modelTopology"]["node"]}
        self.signature = spec.get("signature", {})
        self.weights = _decode_weights(spec["weightsManifest"], path.parent)
        self._prepared: dict[str, object] = {}
        for name, node in self.nodes.items():
            if node["op"] not in _OPS and node["op"] not in ("Const", "Placeholder"):
                raise GraphError(f"{path.name}: unsupported op {node['op']!r} ({name})")
        self._prepare_convs()

    @property
    def input_names(self) -> list[str]:
        return [n for n, v in self.nodes.items() if v["op"] == "Placeholder"]

    @property
    def output_names(self) -> list[str]:
        outs = self.signature.get("outputs", {})
        return [o["name"].split(":")[0] for o in outs.values()] or ["Identity"]

    def _prepare_convs(self) -> None:
        """Kernels converted once to torch's layouts."""
        for name, node in self.nodes.items():
            op = node["op"]
            if op not in ("_FusedConv2D", "Conv2D", "FusedDepthwiseConv2dNative", "DepthwiseConv2dNative"):
                continue
            w = self.weights.get(node["input"][1])
            if w is None:
                continue
            if "Depthwise" in op:
                kh, kw, c, m = w.shape
                tw = w.permute(2, 3, 0, 1).reshape(c * m, 1, kh, kw).contiguous()
                groups = c
            else:
                kh, kw, _, _ = w.shape
                tw = w.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
                groups = 1
            self._prepared[name] = (tw, groups, kh, kw)

    @torch.inference_mode()
    def run(self, feeds: dict[str, torch.Tensor | np.ndarray], outputs: Iterable[str] | None = None) -> list[torch.Tensor]:
        values: dict[str, object] = {}
        for k, v in feeds.items():
            t = torch.as_tensor(v)
            if t.dtype in (torch.int32, torch.uint8, torch.int16):
                t = t.long()
            values[k.split(":")[0]] = t
        names = list(outputs) if outputs is not None else self.output_names
        results = []
        for out in names:
            base, _, idx = out.partition(":")
            self._evaluate(base, values)
            v = values[base]
            results.append(v[int(idx or 0)] if isinstance(v, tuple) else v)
        return results

    def _evaluate(self, target: str, values: dict[str, object]) -> None:
        # Iterative post-order walk: graphs are deep enough to overflow Python's recursion.
        stack = [target]
        while stack:
            name = stack[-1]
            if name in values:
                stack.pop()
                continue
            node = self.nodes.get(name)
            if node is None:
                raise GraphError(f"no node {name!r} in {self.path.name}")
            if node["op"] == "Const":
                values[name] = self.weights[name]
                stack.pop()
                continue
            if node["op"] == "Placeholder":
                raise GraphError(f"input {name!r} was not given")
            pending = [i.split(":")[0] for i in node.get("input", []) if not i.startswith("^")]
            pending = [p for p in pending if p not in values]
            if pending:
                stack.extend(pending)
                continue
            args = []
            for ref in node.get("input", []):
                if ref.startswith("^"):
                    continue
                base, _, idx = ref.partition(":")
                v = values[base]
                args.append(v[int(idx or 0)] if isinstance(v, tuple) else v)
            values[name] = _OPS[node["op"]](self, node, args)
            stack.pop()


# --- ops ---------------------------------------------------------------------------------------


def _conv2d(g: TfjsGraph, node: dict, args: list) -> torch.Tensor:
    x = args[0].float()
    if _attr(node, "data_format", "NHWC") != "NHWC":
        raise GraphError("only NHWC convolutions are supported")
    strides = _attr(node, "strides", [1, 1, 1, 1])
    dilations = _attr(node, "dilations", [1, 1, 1, 1]) or [1, 1, 1, 1]
    prepared = g._prepared.get(node["name"])
    if prepared is None:
        w = args[1]
        if "Depthwise" in node["op"]:
            kh, kw, c, m = w.shape
            prepared = (w.permute(2, 3, 0, 1).reshape(c * m, 1, kh, kw), c, kh, kw)
        else:
            prepared = (w.permute(3, 2, 0, 1), 1, w.shape[0], w.shape[1])
    tw, groups, kh, kw = prepared
    t, b, l, r = _conv_padding(node, x, kh, kw, strides, dilations)
    xc = _nchw(x)
    if t == b and l == r:
        pad = (t, l)
    else:
        xc = F.pad(xc, (l, r, t, b))
        pad = (0, 0)
    y = F.conv2d(xc, tw, None, (strides[1], strides[2]), pad, (dilations[1], dilations[2]), groups)
    y = _apply_fused(node, y, args[2:])
    return _nhwc(y)


def _max_pool(g: TfjsGraph, node: dict, args: list) -> torch.Tensor:
    x = args[0].float()
    ksize = _attr(node, "ksize")
    strides = _attr(node, "strides")
    t, b, l, r = _conv_padding(node, x, ksize[1], ksize[2], strides, [1, 1, 1, 1])
    xc = F.pad(_nchw(x), (l, r, t, b), value=-math.inf)
    y = F.max_pool2d(xc, (ksize[1], ksize[2]), (strides[1], strides[2]))
    return _nhwc(y)


def _resize_bilinear(g: TfjsGraph, node: dict, args: list) -> torch.Tensor:
    x = args[0].float()
    h, w = _ints(args[1])
    align = _attr(node, "align_corners", False)
    half = _attr(node, "half_pixel_centers", False)
    xc = _nchw(x)
    if align:
        y = F.interpolate(xc, size=(h, w), mode="bilinear", align_corners=True)
    elif half:
        y = F.interpolate(xc, size=(h, w), mode="bilinear", align_corners=False)
    else:
        y = _legacy_resize(xc, h, w)
    return _nhwc(y)


def _legacy_resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """TF's resize without half-pixel centres: source = dest * in / out."""
    ih, iw = x.shape[-2:]

    def axis(n_in, n_out):
        src = torch.arange(n_out, dtype=torch.float32) * (n_in / n_out)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, src - lo.float()

    y0, y1, fy = axis(ih, h)
    x0, x1, fx = axis(iw, w)
    top = x[..., y0, :] * (1 - fy)[:, None] + x[..., y1, :] * fy[:, None]
    return top[..., x0] * (1 - fx) + top[..., x1] * fx


def _strided_slice(g: TfjsGraph, node: dict, args: list) -> torch.Tensor:
    x, begin, end, strides = args[0], _ints(args[1]), _ints(args[2]), _ints(args[3])
    bm, em = _attr(node, "begin_mask", 0), _attr(node, "end_mask", 0)
    elm, nam, sam = _attr(node, "ellipsis_mask", 0), _attr(node, "new_axis_mask", 0), _attr(node, "shrink_axis_mask", 0)
    index: list = []
    for i in range(len(begin)):
        bit = 1 << i
        if elm & bit:
            index.append(Ellipsis)
        elif nam & bit:
            index.append(None)
        elif sam & bit:
            index.append(begin[i])
        else:
            if strides[i] <= 0:
                raise GraphError("negative strides in StridedSlice are not supported")
            index.append(slice(None if bm & bit else begin[i], None if em & bit else end[i], strides[i]))
    return x[tuple(index)]


def _reduce(fn: Callable) -> Callable:
    def op(g, node, args):
        x, axes = args[0], _ints(args[1])
        keep = _attr(node, "keep_dims", False)
        if not axes:
            return x
        axes = [a % x.dim() for a in axes]
        return fn(x, axes, keep)
    return op


def _max_over(x, axes, keep):
    for a in sorted(axes, reverse=True):
        x = x.amax(dim=a, keepdim=keep)
    return x


def _cast(g, node, args):
    dst = _TF_DTYPES.get(_attr(node, "DstT"))
    if dst is None:
        raise GraphError(f"unsupported cast to {_attr(node, 'DstT')}")
    x = args[0]
    if dst == torch.int64 and x.is_floating_point():
        return x.trunc().long()
    return x.to(dst)


def _binary(fn):
    return lambda g, node, args: fn(args[0], args[1])


def _floordiv(a, b):
    if a.is_floating_point() or b.is_floating_point():
        return torch.floor(a / b)
    return torch.div(a, b, rounding_mode="floor")


def _realdiv(a, b):
    return a.float() / b.float() if not a.is_floating_point() else a / b


def _reshape(g, node, args):
    return args[0].reshape(_ints(args[1]))


def _squeeze(g, node, args):
    x = args[0]
    dims = _attr(node, "squeeze_dims", []) or []
    if not dims:
        return x.squeeze()
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = x.squeeze(d)
    return x


def _expand_dims(g, node, args):
    d = _ints(args[1])[0]
    x = args[0]
    return x.unsqueeze(d if d >= 0 else d + x.dim() + 1)


def _pack(g, node, args):
    axis = _attr(node, "axis", 0)
    return torch.stack([a if a.dtype == args[0].dtype else a.to(args[0].dtype) for a in args], dim=axis)


def _unpack(g, node, args):
    return tuple(torch.unbind(args[0], dim=_attr(node, "axis", 0)))


def _concat(g, node, args):
    axis = _ints(args[-1])[0]
    return torch.cat(args[:-1], dim=axis)


def _split(g, node, args):
    axis, x = _ints(args[0])[0], args[1]
    n = _attr(node, "num_split")
    return tuple(torch.chunk(x, n, dim=axis))


def _tile(g, node, args):
    return args[0].repeat(*_ints(args[1]))


def _fill(g, node, args):
    v = args[1]
    return torch.full(_ints(args[0]), v.item(), dtype=v.dtype)


def _range(g, node, args):
    start, limit, delta = (a.item() for a in args)
    dtype = _TF_DTYPES.get(_attr(node, "Tidx"), torch.float32)
    return torch.arange(start, limit, delta, dtype=dtype)


def _select(g, node, args):
    cond, a, b = args
    while cond.dim() < a.dim():
        cond = cond.unsqueeze(-1)
    return torch.where(cond, a, b)


def _argmax(g, node, args):
    return args[0].argmax(dim=_ints(args[1])[0])


def _topk(g, node, args):
    values, indices = torch.topk(args[0], _ints(args[1])[0], dim=-1, sorted=True)
    return values, indices


def _gather_nd(g, node, args):
    params, indices = args
    k = indices.shape[-1]
    return params[tuple(indices[..., i] for i in range(k))]


def _gather(g, node, args):
    params, indices = args[0], args[1]
    axis = _ints(args[2])[0] if len(args) > 2 else 0
    return torch.index_select(params, axis, indices.reshape(-1)).reshape(
        params.shape[:axis] + indices.shape + params.shape[axis + 1:])


_OPS: dict[str, Callable] = {
    "Identity": lambda g, n, a: a[0],
    "Cast": _cast,
    "Shape": lambda g, n, a: torch.tensor(list(a[0].shape), dtype=torch.int64),
    "Size": lambda g, n, a: torch.tensor(a[0].numel(), dtype=torch.int64),
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "ExpandDims": _expand_dims,
    "Pack": _pack,
    "Unpack": _unpack,
    "ConcatV2": _concat,
    "Split": _split,
    "Tile": _tile,
    "Fill": _fill,
    "Range": _range,
    "StridedSlice": _strided_slice,
    "GatherNd": _gather_nd,
    "GatherV2": _gather,
    "Select": _select,
    "SelectV2": lambda g, n, a: torch.where(*a),
    "AddV2": _binary(torch.add),
    "Add": _binary(torch.add),
    "AddN": lambda g, n, a: sum(a[1:], a[0]),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "RealDiv": _binary(_realdiv),
    "FloorDiv": _binary(_floordiv),
    "Maximum": _binary(torch.maximum),
    "Minimum": _binary(torch.minimum),
    "SquaredDifference": _binary(lambda a, b: (a - b) * (a - b)),
    "Less": _binary(torch.lt),
    "LessEqual": _binary(torch.le),
    "Greater": _binary(torch.gt),
    "GreaterEqual": _binary(torch.ge),
    "Equal": _binary(torch.eq),
    "LogicalAnd": _binary(torch.logical_and),
    "Abs": lambda g, n, a: a[0].abs(),
    "Exp": lambda g, n, a: a[0].exp(),
    "Sqrt": lambda g, n, a: a[0].float().sqrt(),
    "Rsqrt": lambda g, n, a: a[0].float().rsqrt(),
    "Reciprocal": lambda g, n, a: 1.0 / a[0].float(),
    "Sigmoid": lambda g, n, a: torch.sigmoid(a[0]),
    "Relu": lambda g, n, a: F.relu(a[0]),
    "Relu6": lambda g, n, a: F.hardtanh(a[0], 0.0, 6.0),
    "Tanh": lambda g, n, a: torch.tanh(a[0]),
    "Sum": _reduce(lambda x, axes, keep: x.sum(dim=axes, keepdim=keep)),
    "Max": _reduce(_max_over),
    "Mean": _reduce(lambda x, axes, keep: x.mean(dim=axes, keepdim=keep)),
    "ArgMax": _argmax,
    "TopKV2": _topk,
    "_FusedConv2D": _conv2d,
    "Conv2D": _conv2d,
    "FusedDepthwiseConv2dNative": _conv2d,
    "DepthwiseConv2dNative": _conv2d,
    "MaxPool": _max_pool,
    "ResizeBilinear": _resize_bilinear,
}
