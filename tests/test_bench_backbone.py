"""`xnect-bench backbone`: the reference trunk, the simulated sparsity and the CLI surface."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from xnect_app.bench.backbone import (
    ResNet50Trunk, count_macs, fuse_resnet, ratios, simulate_sparsity,
)
from xnect_app.cli.bench import main
from xnect_app.nn.selecsls import build, prune


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small inputs: a second thread mostly spins on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resnet50_trunk_is_stride16_and_fuses_exactly():
    torch.manual_seed(0)
    trunk = ResNet50Trunk()
    with torch.no_grad():
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
    trunk = trunk.double().eval()
    fused = fuse_resnet(trunk)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())  # source untouched
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        ref, out = trunk(x), fused(x)
    assert ref.shape == (1, 1024, 4, 6)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-9
    # 4.1 GMAC for the whole ResNet-50 at 224; the trunk (no layer4 / fc) is about 3.3
    assert 3.0e9 < count_macs(trunk, 224, 224) < 3.5e9


def test_simulated_sparsity_shrinks_the_core_but_keeps_its_outputs():
    core = build("selecsls42b", features_only=True).eval()
    pruned = prune(simulate_sparsity(core, 0.25), 1e-3)
    assert count_macs(pruned, 64, 64) < 0.7 * count_macs(core, 64, 64)
    assert pruned.features[3].conv6[0].weight.shape[0] == 288   # stride-8 output kept
    assert pruned.features[5].conv6[0].weight.shape[0] == 480   # stride-16 output kept
    assert prune(core, 1e-3).widths == prune(core, -1).widths  # random init: nothing to prune


def test_ratios_pair_rows_by_size_batch_and_variant():
    def row(model, variant, ms):
        return dict(model=model, variant=variant, width=224, height=224, batch=1,
                    median_ms=ms, min_ms=ms / 2, cpu_median_ms=ms * 2)
    rows = [row("resnet50", "dense", 30.0), row("selecsls60", "dense", 20.0),
            row("selecsls60", "fused", 10.0), row("resnet50", "fused", 25.0),
            row("selecsls60", "pruned-sim", 8.0)]
    got = {(r["kind"], r["variant"]): r["ratio"] for r in ratios(rows)}
    assert all(r["ratio"] == r["ratio_of_min"] == r["ratio_cpu"] for r in ratios(rows))
    assert got == {("resnet50_over_selecsls", "dense"): 1.5,
                   ("resnet50_over_selecsls", "fused"): 2.5,
                   ("fused_over_pruned_sim", "pruned-sim"): 1.25}


def test_cli_runs_end_to_end_as_json(capsys, tmp_path):
    out = tmp_path / "bench.json"
    rc = main(["-q", "backbone", "--models", "42b", "--sizes", "64x64", "--batches", "1",
               "--runs", "1", "--warmup", "0", "--no-memory", "--json", "--out", str(out)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(out.read_text())
    labels = {(r["model"], r["variant"]) for r in doc["rows"]}
    assert labels == {("selecsls42b", v) for v in ("dense", "fused", "pruned-sim")} | {
        ("resnet50", "dense"), ("resnet50", "fused")}
    assert all(r["median_ms"] > 0 and r["cpu_median_ms"] > 0 for r in doc["rows"])
    assert {r["kind"] for r in doc["ratios"]} == {"resnet50_over_selecsls", "fused_over_pruned_sim"}
    assert doc["threads"] >= 1 and doc["memory"] == []


@pytest.mark.parametrize("argv,needle", [
    (["backbone", "--models", "selecsls50"], "valid names: selecsls42"),
    (["backbone", "--sizes", "512by320"], "is not WIDTHxHEIGHT"),
    (["backbone", "--runs", "0"], "must be at least 1"),
    (["nope"], "invalid choice"),
])
def test_cli_bad_input_is_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
