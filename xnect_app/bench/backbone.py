"""Backbone benchmark: SelecSLS cores vs a ResNet-50 trunk of the same output stride.

Times eval-mode forward passes (warm-up, then the median of N runs; models are interleaved run by
run so load from other processes hits them alike), dense / BN-fused / pruned, and measures the
training-mode peak memory of one forward+backward in a fresh subprocess (peak RSS from
`resource.getrusage` minus the RSS just before the step).

Pruning a randomly initialised model removes nothing (every |gamma| is 1). The "pruned" variant
therefore first zeroes gamma and beta of a random fraction of each layer's channels: a
*simulation* of the implicit filter sparsity a trained model has, labelled as such everywhere.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..io.sinks import atomic_write_text
from ..nn.selecsls import build, fuse_bn, fuse_conv_bn, prune, resolve_name
from ..options import OneLineParser, UsageError, non_negative_int, positive_int, run_cli, score

_logger = logging.getLogger(__name__)

RESNET50 = "resnet50"


# --------------------------------------------------------------------------- ResNet-50 trunk

class Bottleneck(nn.Module):
    """torchvision-style (v1.5: stride on the 3x3) bottleneck with a residual add."""

    expansion = 4

    def __init__(self, in_chs: int, mid_chs: int, stride: int = 1):
        super().__init__()
        out_chs = mid_chs * self.expansion
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.conv2 = nn.Conv2d(mid_chs, mid_chs, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.conv3 = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.relu(self.bn3(self.conv3(x)) + shortcut)


class ResNet50Trunk(nn.Module):
    """ResNet-50 stem + layer1..layer3: 1024 channels at stride 16, like a SelecSLS core."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, in_chs = [], 64
        for mid_chs, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2)):
            stage = []
            for i in range(blocks):
                stage.append(Bottleneck(in_chs, mid_chs, stride if i == 0 else 1))
                in_chs = mid_chs * Bottleneck.expansion
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


def fuse_resnet(model: ResNet50Trunk) -> ResNet50Trunk:
    """A BN-fused eval-mode copy (BNs become Identity); the source is not modified."""
    fused = copy.deepcopy(model).eval()
    pairs = [(fused.stem, "0", "1")]
    for stage in (fused.layer1, fused.layer2, fused.layer3):
        for block in stage:
            pairs += [(block, "conv1", "bn1"), (block, "conv2", "bn2"), (block, "conv3", "bn3")]
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))
    for parent, conv, bn in pairs:
        setattr(parent, conv, fuse_conv_bn(getattr(parent, conv), getattr(parent, bn)))
        setattr(parent, bn, nn.Identity())
    return fused


# --------------------------------------------------------------------------- models under test

def make_model(name: str) -> nn.Module:
    """'resnet50' -> ResNet50Trunk; anything else -> a SelecSLS features_only core."""
    if name == RESNET50:
        return ResNet50Trunk()
    return build(name, features_only=True)


def simulate_sparsity(core: nn.Module, fraction: float, seed: int = 0) -> nn.Module:
    """Copy of a SelecSLS core with gamma = beta = 0 on a random `fraction` of every layer's
    channels (the core's two output layers excepted: `prune` keeps their widths)."""
    sparse = copy.deepcopy(core).eval()
    taps = {f"features.{sparse.stride8_index}.conv6", f"features.{len(sparse.features) - 1}.conv6"}
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in sparse.named_modules():
            if not isinstance(module, nn.BatchNorm2d) or name.rsplit(".", 1)[0] in taps:
                continue
            n = module.num_features
            drop = torch.randperm(n, generator=gen)[: min(int(round(fraction * n)), n - 1)]
            module.weight[drop] = 0.0
            module.bias[drop] = 0.0
    return sparse


def count_macs(model: nn.Module, height: int, width: int) -> int:
    """Multiply-accumulates of the convs and linears for one image (shape-only meta pass)."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            total += out.numel() * k
        else:
            total += out.numel() * m.in_features

    meta = copy.deepcopy(model).to("meta")
    handles = [m.register_forward_hook(hook) for m in meta.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        meta(torch.empty(1, 3, height, width, device="meta"))
    for h in handles:
        h.remove()
    return total


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class BackboneBenchConfig:
    models: tuple[str, ...] = ("selecsls42b", "selecsls60", "selecsls84")
    sizes: tuple[tuple[int, int], ...] = ((512, 320), (224, 224))  # (width, height)
    batches: tuple[int, ...] = (1, 16)
    runs: int = 3
    warmup: int = 1
    threads: int = field(default_factory=torch.get_num_threads)
    sim_sparsity: float = 0.15
    memory: bool = True
    memory_batch: int = 16
    memory_size: tuple[int, int] = (224, 224)
    memory_models: tuple[str, ...] = ("selecsls60", RESNET50)
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> "BackboneBenchConfig":
        """Batch 1 only: a couple of minutes on two CPU cores."""
        return cls(**{"batches": (1,), "runs": 3, "warmup": 1, **overrides})


# --------------------------------------------------------------------------- timing

def _time_interleaved(models: dict[str, nn.Module], x: torch.Tensor, runs: int,
                      warmup: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per-model (wall ms, process CPU ms) per run; each run visits every model once, in a
    rotating order. CPU time ignores time spent descheduled, so on a shared machine with one
    thread it is the steadier measure; with more threads it also counts their spin-waits."""
    times = {label: ([], []) for label in models}
    labels = list(models)
    with torch.inference_mode():
        for _ in range(warmup):
            for label in labels:
                models[label](x)
        for r in range(runs):
            for label in labels[r % len(labels):] + labels[: r % len(labels)]:
                t0, c0 = time.perf_counter(), time.process_time()
                models[label](x)
                times[label][0].append((time.perf_counter() - t0) * 1e3)
                times[label][1].append((time.process_time() - c0) * 1e3)
    return times


def _channels(widths) -> int:
    return widths.stem + sum(map(sum, widths.blocks)) + sum(widths.head)


def _variants(cfg: BackboneBenchConfig) -> tuple[dict[str, nn.Module], dict[str, dict], list[dict]]:
    """(label -> model, label -> info, sanity checks) for every model and variant."""
    torch.manual_seed(cfg.seed)
    models, info, checks = {}, {}, []
    for name in cfg.models + (RESNET50,):
        dense = make_model(name).eval()
        models[f"{name}/dense"] = dense
        if name == RESNET50:
            models[f"{name}/fused"] = fuse_resnet(dense)
            continue
        fused = fuse_bn(dense)
        models[f"{name}/fused"] = fused
        # Real pruning of a random-init model: nothing qualifies (recorded, not timed).
        untouched = prune(dense, 1e-3)
        checks.append(dict(model=name, check="channels removed by prune(random init, 1e-3)",
                           value=_channels(fused.widths) - _channels(untouched.widths)))
        if cfg.sim_sparsity > 0:
            sparse = simulate_sparsity(dense, cfg.sim_sparsity, cfg.seed)
            pruned = prune(sparse, 1e-3)
            models[f"{name}/pruned-sim"] = pruned
            checks.append(dict(model=name, check="channels removed by prune(pruned-sim, 1e-3)",
                               value=_channels(fused.widths) - _channels(pruned.widths)))
            x = torch.randn(1, 3, 128, 128)
            with torch.inference_mode():
                ref, out = sparse(x).stride16, pruned(x).stride16
            checks.append(dict(model=name, check="pruned-sim vs zeroed dense, max rel diff",
                               value=float((out - ref).abs().max() / ref.abs().max())))
    for label, model in models.items():
        info[label] = dict(params=n_params(model))
    return models, info, checks


def run_timing(cfg: BackboneBenchConfig) -> tuple[list[dict], list[dict]]:
    models, info, checks = _variants(cfg)
    macs = {}
    for label, model in models.items():
        for w, h in cfg.sizes:
            macs[label, w, h] = count_macs(model, h, w)
    rows = []
    gen = torch.Generator().manual_seed(cfg.seed)
    for w, h in cfg.sizes:
        for batch in cfg.batches:
            _logger.info("timing %dx%d batch %d: %d models x (%d warm-up + %d runs)",
                         w, h, batch, len(models), cfg.warmup, cfg.runs)
            x = torch.randn(batch, 3, h, w, generator=gen)
            times = _time_interleaved(models, x, cfg.runs, cfg.warmup)
            for label, (wall, cpu) in times.items():
                name, variant = label.split("/")
                rows.append(dict(
                    model=name, variant=variant, width=w, height=h, batch=batch,
                    median_ms=statistics.median(wall), min_ms=min(wall),
                    cpu_median_ms=statistics.median(cpu),
                    runs_ms=[round(v, 2) for v in wall], cpu_runs_ms=[round(v, 2) for v in cpu],
                    gmacs_per_image=macs[label, w, h] / 1e9, params=info[label]["params"],
                    images_per_s=1e3 * batch / statistics.median(wall),
                ))
    return rows, checks


def ratios(rows: list[dict]) -> list[dict]:
    """ResNet-50 time / SelecSLS time for the same size, batch and variant (>1: SelecSLS faster)
    and fused time / pruned-sim time (the simulated pruning speed-up): from the wall-clock
    medians, the fastest runs and the CPU-time medians (see `_time_interleaved`)."""
    med = {(r["model"], r["variant"], r["width"], r["height"], r["batch"]): r["median_ms"]
           for r in rows}
    fastest = {(r["model"], r["variant"], r["width"], r["height"], r["batch"]): r["min_ms"]
               for r in rows}
    cpu = {(r["model"], r["variant"], r["width"], r["height"], r["batch"]): r["cpu_median_ms"]
           for r in rows}
    out = []
    for key in med:
        model, variant, w, h, b = key
        if model == RESNET50:
            continue
        if variant in ("dense", "fused"):
            kind, ref = "resnet50_over_selecsls", (RESNET50, variant, w, h, b)
        elif variant == "pruned-sim":
            kind, ref = "fused_over_pruned_sim", (model, "fused", w, h, b)
        else:
            continue
        if ref in med:
            out.append(dict(kind=kind, model=model, variant=variant, width=w, height=h, batch=b,
                            ratio=med[ref] / med[key], ratio_of_min=fastest[ref] / fastest[key],
                            ratio_cpu=cpu[ref] / cpu[key]))
    return out


# --------------------------------------------------------------------------- memory

def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_worker(name: str, batch: int, width: int, height: int, threads: int) -> dict:
    """One training-mode forward+backward; run in a fresh process (see `measure_memory`)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = make_model(name).train()
    x = torch.randn(batch, 3, height, width)
    gc.collect()
    before = _rss_mib()
    out = model(x)
    maps = out if isinstance(out, tuple) else (out,)
    sum(m.mean() for m in maps).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return dict(model=name, batch=batch, width=width, height=height, rss_before_mib=before,
                peak_rss_mib=peak, train_step_peak_mib=peak - before)


def measure_memory(cfg: BackboneBenchConfig) -> list[dict]:
    """Peak RSS growth of one training step, each model in its own subprocess."""
    w, h = cfg.memory_size
    results = []
    for name in cfg.memory_models:
        _logger.info("memory: %s, training step at batch %d, %dx%d", name, cfg.memory_batch, w, h)
        args = json.dumps([name, cfg.memory_batch, w, h, cfg.threads])
        proc = subprocess.run([sys.executable, "-m", __name__, "--memory-worker", args],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"memory worker for {name} failed: {tail}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


# --------------------------------------------------------------------------- report

def run_benchmark(cfg: BackboneBenchConfig) -> dict:
    """Run the whole benchmark and return the JSON-ready report."""
    torch.set_num_threads(cfg.threads)
    load_before = os.getloadavg()
    t0 = time.time()
    rows, checks = run_timing(cfg)
    memory = measure_memory(cfg) if cfg.memory else []
    report = dict(
        benchmark="backbone",
        what="SelecSLS features_only cores (stem+features) vs ResNet-50 stem+layer1..3, stride 16",
        device="cpu", cpu=_cpu_name(), threads=torch.get_num_threads(),
        torch=torch.__version__, python=platform.python_version(),
        config=asdict(cfg),
        load_avg_before=[round(v, 2) for v in load_before],
        load_avg_after=[round(v, 2) for v in os.getloadavg()],
        cpu_count=os.cpu_count(), seconds=round(time.time() - t0, 1),
        notes=[
            "median/min of the timed runs after warm-up; eval mode, torch.inference_mode",
            "cpu_median_ms: process CPU time (time.process_time) per forward; unaffected by time "
            "spent descheduled, so it is the steadier number on a shared machine with 1 thread; "
            "with more threads it includes OpenMP spin-waiting",
            "models are interleaved run by run so outside load affects them alike",
            "pruned-sim: gamma=beta=0 on a random "
            f"{cfg.sim_sparsity:.0%} of each layer's channels, then prune(1e-3): a simulation of "
            "trained implicit sparsity, not a trained model; real pruning of a random-init "
            "model removes nothing (see checks)",
            "memory: peak RSS (getrusage ru_maxrss) minus RSS before one training-mode "
            "forward+backward, fresh subprocess per model",
        ],
        rows=rows, ratios=ratios(rows), checks=checks, memory=memory,
    )
    if len(memory) == 2:
        by_name = {m["model"]: m["train_step_peak_mib"] for m in memory}
        if RESNET50 in by_name:
            other = next(k for k in by_name if k != RESNET50)
            report["memory_ratio"] = dict(
                kind="resnet50_over_selecsls", model=other,
                ratio=by_name[RESNET50] / max(by_name[other], 1e-9))
    return report


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_report(report: dict) -> str:
    """Readable tables: timings, ratios, simulated pruning, memory."""
    cfg = report["config"]
    lines = [
        f"Backbone benchmark: {report['what']}",
        f"CPU {report['cpu']}, {report['threads']} threads, torch {report['torch']}; "
        f"median of {cfg['runs']} runs after {cfg['warmup']} warm-up; "
        f"load avg {report['load_avg_before'][0]:.1f} -> {report['load_avg_after'][0]:.1f} "
        f"on {report['cpu_count']} CPUs",
        "",
        f"{'size':>8} {'batch':>5}  {'model':<12} {'variant':<10} {'GMAC/img':>8} "
        f"{'Mparams':>7} {'median ms':>10} {'min ms':>9} {'CPU ms':>9} {'img/s':>7}",
    ]
    for r in report["rows"]:
        lines.append(
            f"{r['width']}x{r['height']:<4} {r['batch']:>5}  {r['model']:<12} {r['variant']:<10} "
            f"{r['gmacs_per_image']:>8.2f} {r['params'] / 1e6:>7.2f} {r['median_ms']:>10.1f} "
            f"{r['min_ms']:>9.1f} {r['cpu_median_ms']:>9.1f} {r['images_per_s']:>7.1f}")

    def ratio_lines(kind: str, with_variant: bool) -> list[str]:
        out = []
        for r in report["ratios"]:
            if r["kind"] == kind:
                variant = f"{r['variant']:<6} " if with_variant else ""
                out.append(f"  {r['width']}x{r['height']:<4} b{r['batch']:<3} {variant}"
                           f"{r['model']:<12} {r['ratio']:>5.2f}x {r['ratio_of_min']:>5.2f}x "
                           f"{r['ratio_cpu']:>5.2f}x")
        return out

    header = "  (wall median, wall fastest, CPU-time median)"
    speed = ratio_lines("resnet50_over_selecsls", True)
    if speed:
        lines += ["", "ResNet-50 trunk time / SelecSLS core time (>1: SelecSLS faster)", header]
        lines += speed
    pruned = ratio_lines("fused_over_pruned_sim", False)
    if pruned:
        lines += ["", f"Simulated pruning ({cfg['sim_sparsity']:.0%} of each layer's channels "
                      "zeroed, NOT a trained model): fused time / pruned time", header]
        lines += pruned
    if report["checks"]:
        lines += ["", "Checks"]
        lines += [f"  {c['model']:<12} {c['check']}: {c['value']:.3g}"
                  for c in report["checks"]]
    if report["memory"]:
        lines += ["", "Training-step peak memory (peak RSS - RSS before; forward+backward)"]
        for m in report["memory"]:
            lines.append(f"  {m['model']:<12} b{m['batch']} {m['width']}x{m['height']}: "
                         f"{m['train_step_peak_mib']:.0f} MiB")
        if "memory_ratio" in report:
            mr = report["memory_ratio"]
            lines.append(f"  ResNet-50 / {mr['model']}: {mr['ratio']:.2f}x")
    return "\n".join(lines)


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(positive_int(t) for t in text.split(",") if t.strip())


def _size_list(text: str) -> tuple[tuple[int, int], ...]:
    sizes = []
    for item in text.split(","):
        parts = item.lower().strip().split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise argparse.ArgumentTypeError(f"size {item!r} is not WIDTHxHEIGHT, e.g. 512x320")
        w, h = int(parts[0]), int(parts[1])
        if w < 32 or h < 32:
            raise argparse.ArgumentTypeError(f"size {item!r}: width and height must be >= 32")
        sizes.append((w, h))
    return tuple(sizes)


DESCRIPTION = ("Times SelecSLS features_only cores and a ResNet-50 stem+layer1..3 trunk\n"
               "(both stride 16) on the CPU: dense, BN-fused and pruned. Pruning a random-\n"
               "init model removes nothing, so 'pruned-sim' first zeroes a fraction of\n"
               "the BN gammas (a simulation). Also measures training-step peak memory.\n"
               "Prints tables, or one JSON document with --json.")
EPILOG = ("examples:\n  xnect-bench backbone --quick\n"
          "  xnect-bench backbone --json --out backbone.json\n"
          "  xnect-bench backbone --models 60 --sizes 512x320 --batches 1 --runs 5")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options of the benchmark; pass a subparser to mount it under `xnect-bench backbone`."""
    p = parser or OneLineParser(prog="xnect-bench backbone", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--out", type=Path, metavar="PATH",
                   help="also write the JSON document to PATH")
    p.add_argument("--quick", action="store_true", help="batch 1 only (skips batch 16)")
    p.add_argument("--runs", type=positive_int, default=3, metavar="N",
                   help="timed runs per measurement (default: %(default)s)")
    p.add_argument("--warmup", type=non_negative_int, default=1, metavar="N",
                   help="untimed warm-up runs (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, metavar="T",
                   help="torch CPU threads (default: torch's current setting)")
    p.add_argument("--models", default="selecsls42b,selecsls60,selecsls84", metavar="NAMES",
                   help="comma-separated SelecSLS variants; ResNet-50 is always added "
                        "(default: %(default)s)")
    p.add_argument("--sizes", type=_size_list, default="512x320,224x224", metavar="WxH[,WxH]",
                   help="input sizes (default: %(default)s)")
    p.add_argument("--batches", type=_int_list, default="1,16", metavar="N[,N]",
                   help="batch sizes (default: %(default)s; --quick: 1)")
    p.add_argument("--sim-sparsity", type=score, default=0.15, metavar="F",
                   help="fraction of each layer's channels zeroed for the simulated-pruning "
                        "variant; 0 turns it off (default: %(default)s)")
    p.add_argument("--no-memory", action="store_true", help="skip the training-memory measurement")
    return p


def run(args: argparse.Namespace) -> int:
    """Entry point for a parsed namespace (what `xnect-bench backbone` calls)."""
    try:
        models = tuple(resolve_name(m.strip()) for m in args.models.split(",") if m.strip())
    except KeyError as e:  # a bad value: exit 2, as argparse's
        raise UsageError(e.args[0]) from None
    if not models:
        raise UsageError("--models is empty")
    cfg = BackboneBenchConfig(
        models=models, sizes=args.sizes, batches=(1,) if args.quick else args.batches,
        runs=args.runs, warmup=args.warmup, threads=args.threads or torch.get_num_threads(),
        sim_sparsity=args.sim_sparsity, memory=not args.no_memory)
    report = run_benchmark(cfg)
    document = json.dumps(report, indent=1)
    if args.out:
        atomic_write_text(args.out, document + "\n")
    print(document if args.json else format_report(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("xnect-bench backbone", build_parser(), run, argv, user_errors=(OSError,))


def _memory_worker_main(arg: str) -> int:
    name, batch, w, h, threads = json.loads(arg)
    print(json.dumps(memory_worker(name, batch, w, h, threads)))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-worker":
        sys.exit(_memory_worker_main(sys.argv[2]))
    sys.exit(main())
