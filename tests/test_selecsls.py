"""SelecSLS backbone: configs, shapes, checkpoint formats, BN fusion and pruning."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from xnect_app.nn.selecsls import (
    CheckpointError, FusedSelecSls, build, fuse_bn, load_checkpoint, prune,
    resolve_name,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small inputs: a second thread mostly spins on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PARAMS = {
    "selecsls42": 30_354_952,
    "selecsls42b": 32_458_248,
    "selecsls60": 30_670_768,
    "selecsls60b": 32_774_064,
    "selecsls84": 40_468_840,
    "selecsls84_timm": 50_954_600,
}
CORE = {  # stride-8 tap module and (stride-8, stride-16) channels
    "selecsls42": ("features.3", 288, 480), "selecsls42b": ("features.3", 288, 480),
    "selecsls60": ("features.4", 288, 416), "selecsls60b": ("features.4", 288, 416),
    "selecsls84": ("features.6", 304, 512), "selecsls84_timm": ("features.6", 304, 512),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def rel_err(a, b) -> float:
    """Max abs difference relative to the reference's max; field-wise for SelecSlsFeatures."""
    if isinstance(a, tuple):
        return max(rel_err(x, y) for x, y in zip(a, b))
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def calibrate(model: nn.Module, size=(32, 32), seed=0) -> nn.Module:
    """Give every BN real running stats (one train-mode batch) and non-trivial gamma/beta."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
        with torch.no_grad():
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.2)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, *size, generator=g))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def image(n=1, h=32, w=32, seed=1) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} was modified"


def timm_format(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {("fc." + k[len("classifier.0."):] if k.startswith("classifier.0.") else k): v
            for k, v in state.items()}


# ---------------------------------------------------------------------------------- configs

@pytest.mark.parametrize("alias,canonical", [
    ("selecsls42", "selecsls42"), ("SelecSLS42_B", "selecsls42b"), ("selecsls42b", "selecsls42b"),
    ("SelecSls60b", "selecsls60b"), ("selecsls60_b", "selecsls60b"), ("SELECSLS84", "selecsls84"),
    ("selecsls84_timm", "selecsls84_timm"),
])
def test_names_are_case_insensitive(alias, canonical):
    assert resolve_name(alias) == canonical


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as err:
        build("selecsls50")
    for name in ("selecsls42b", "selecsls60", "selecsls84"):
        assert name in str(err.value)


# ---------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_counts_and_forward_shapes(name):
    torch.manual_seed(0)
    model = build(name).eval()
    assert n_params(model) == PARAMS[name]
    core = build(name, features_only=True).eval()
    tap, c8, c16 = CORE[name]
    assert [f["num_chs"] for f in core.feature_info] == [c8, c16]
    assert [f["reduction"] for f in core.feature_info] == [8, 16]
    assert core.feature_info[0]["module"] == tap
    assert not any(k.startswith(("head.", "classifier.")) for k in core.state_dict())
    with torch.no_grad():
        logits = model(image(1, 32, 32))
        feats = core(image(1, 32, 48))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    assert feats.stride8.shape == (1, c8, 4, 6)
    assert feats.stride16.shape == (1, c16, 2, 3)


def test_xnect_input_size():
    core = build("selecsls60", features_only=True).to("meta")  # shapes only, no arithmetic
    feats = core(torch.empty(1, 3, 320, 512, device="meta"))
    assert feats.stride8.shape == (1, 288, 40, 64)
    assert feats.stride16.shape == (1, 416, 20, 32)


# ---------------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def trained42b():
    torch.manual_seed(3)
    return calibrate(build("selecsls42b", num_classes=10))


def scramble(model: nn.Module) -> None:
    with torch.no_grad():
        for t in model.state_dict().values():
            t.zero_()


def test_official_and_timm_checkpoints_give_identical_logits(trained42b, tmp_path):
    x = image()
    with torch.no_grad():
        ref = trained42b(x)
    official = trained42b.state_dict()
    timm = timm_format(official)
    assert "fc.weight" in timm and "classifier.0.weight" not in timm
    torch.save({"state_dict": {"module." + k: v for k, v in official.items()}, "epoch": 3},
               tmp_path / "official.pth")
    sources = {
        "official file, DataParallel prefix": tmp_path / "official.pth",
        "timm dict, compile prefix": {"model": {"_orig_mod." + k: v for k, v in timm.items()}},
        "plain timm dict": timm,
    }
    model = build("selecsls42b", num_classes=10).eval()
    for what, source in sources.items():
        scramble(model)
        report = load_checkpoint(model, source)
        assert not report.missing and not report.unexpected and not report.mismatched
        with torch.no_grad():
            assert torch.equal(model(x), ref), what


def test_selecsls84_official_vs_timm_head():
    official_model = build("selecsls84", num_classes=5)
    timm_model = build("selecsls84_timm", num_classes=5)
    official = official_model.state_dict()
    timm = timm_format(timm_model.state_dict())
    assert official["head.3.0.weight"].shape == (1280, 1024, 1, 1)
    assert timm["head.3.0.weight"].shape == (1280, 1024, 3, 3)
    assert "head.3.0.weight" in load_checkpoint(timm_model, timm).loaded
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(timm_model, official)
    assert "head.3.0.weight" in str(err.value) and "'selecsls84'" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(official_model, timm)
    assert "head.3.0.weight" in str(err.value) and "'selecsls84_timm'" in str(err.value)


def test_backbone_only_load_into_features_only(trained42b):
    core = build("selecsls42b", features_only=True).eval()
    report = load_checkpoint(core, {"state_dict": timm_format(trained42b.state_dict())})
    assert "classifier.0.weight" in report.ignored and "head.0.0.weight" in report.ignored
    assert "stem.0.weight" in report.loaded and not report.missing
    x = image()
    with torch.no_grad():
        ref = trained42b.forward_core(x)
        got = core(x)
    assert torch.equal(got.stride8, ref.stride8) and torch.equal(got.stride16, ref.stride16)


def test_missing_keys_are_named(trained42b):
    state = dict(trained42b.state_dict())
    del state["features.2.conv3.0.weight"], state["head.1.1.bias"]
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build("selecsls42b", num_classes=10), state)
    msg = str(err.value)
    assert "2 missing keys" in msg
    assert "features.2.conv3.0.weight" in msg and "head.1.1.bias" in msg
    assert err.value.missing == ["features.2.conv3.0.weight", "head.1.1.bias"]


def test_unexpected_keys_are_named(trained42b):
    state = dict(trained42b.state_dict(), **{"aux.0.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build("selecsls42b", num_classes=10), state)
    assert "1 unexpected keys (aux.0.weight)" in str(err.value)


def test_shape_mismatch_is_named_and_non_strict_loads_the_rest():
    state = build("selecsls60", num_classes=10).state_dict()
    model = build("selecsls60b", num_classes=10)  # differs in head.2 / head.3 / classifier
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, state)
    msg = str(err.value)
    assert "shape mismatches" in msg and "head.2.0.weight: checkpoint [1024, 1024, 3, 3]" in msg
    report = load_checkpoint(model, state, strict=False)
    assert "head.2.0.weight" in report.mismatched
    assert torch.equal(model.state_dict()["features.8.conv6.0.weight"],
                       state["features.8.conv6.0.weight"])


def test_wrong_variant_checkpoint():
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build("selecsls60", features_only=True),
                        build("selecsls42b", features_only=True).state_dict())
    assert "missing keys (features.6." in str(err.value)


def test_non_checkpoint_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build("selecsls42b", features_only=True), text)
    assert "notes.txt" in str(err.value) and "not a readable PyTorch checkpoint" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(build("selecsls42b", features_only=True), tmp_path / "nope.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_checkpoint(build("selecsls42b", features_only=True), tmp_path / "list.pth")


# ---------------------------------------------------------------------------------- fusion

def test_fuse_bn_classifier_is_exact_and_leaves_the_source_alone(trained42b):
    model = copy.deepcopy(trained42b).double()  # float64: a check of the maths, not round-off
    before = snapshot(model)
    fused = fuse_bn(model)
    assert isinstance(fused, FusedSelecSls)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert_unchanged(model, before)
    source_storage = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    assert not any(t.untyped_storage().data_ptr() in source_storage
                   for t in fused.state_dict().values())
    x = image().double()
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) < 1e-9
    # a trained-like model has no gamma below the threshold: nothing to prune
    assert prune(model, 1e-3).widths == fused.widths


def test_fuse_bn_core_float32():
    torch.manual_seed(4)
    core = calibrate(build("selecsls60", features_only=True))
    fused = fuse_bn(core)
    x = image()
    core64 = copy.deepcopy(core).double()
    with torch.no_grad():
        ref32, got32 = core(x), fused(x)
        ref64 = core64(x.double())
    # In float32 a 60-layer net itself drifts ~1e-4 from the float64 result; fusion adds no more.
    floor = rel_err(ref32, ref64)
    assert rel_err(got32, ref64) < max(3 * floor, 1e-5)
    assert rel_err(got32, ref32) < 3e-4


def test_fused_model_rebuilds_from_widths(trained42b):
    fused = fuse_bn(trained42b)
    again = FusedSelecSls(fused.cfg, fused.widths, num_classes=10).eval()
    load_checkpoint(again, fused.state_dict())
    x = image()
    with torch.no_grad():
        assert torch.equal(again(x), fused(x))


# ---------------------------------------------------------------------------------- pruning

def zero_channels(model: nn.Module, layer: str, channels, beta: float) -> None:
    bn = model.get_submodule(layer)[1]
    with torch.no_grad():
        bn.weight[channels] = 0.0
        bn.bias[channels] = beta


# layer -> (channels, beta). 1x1 consumers get beta > 0 (folded exactly into their biases);
# channels read by a 3x3 conv get beta <= 0, because folding is only exact off the border there.
ZEROED = {
    "stem": ([0, 31], -1.0),                   # -> features.0.conv1 (3x3)
    "features.0.conv6": ([3, 10], -0.2),       # stage skip -> features.1.conv1 (3x3), .conv6 (1x1)
    "features.1.conv1": ([0, 5, 7], 0.5),      # d1 -> conv2 (1x1), conv6 (1x1)
    "features.1.conv2": ([4], 0.0),            # -> conv3 (3x3)
    "features.2.conv3": ([1, 2], 0.3),         # d2 -> conv4 (1x1), conv6 (1x1)
    "features.3.conv5": ([6], 0.25),           # d3 -> conv6 (1x1)
    "head.2": ([8, 9, 100], 0.4),              # -> head.3 (1x1 in 42_B)
    "head.3": ([2, 50], 0.7),                  # -> pool -> classifier
}


def expected_shapes(model: nn.Module, zeroed: dict) -> dict[str, tuple]:
    """Weight shapes after removing exactly the zeroed channels from producers and consumers."""
    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if k.endswith(".0.weight")}
    n = {layer: len(ch) for layer, (ch, _) in zeroed.items()}
    mid = {i: blk.mid_chs for i, blk in enumerate(model.cfg.blocks)}
    for layer, k in n.items():
        shapes[f"{layer}.0.weight"][0] -= k
    shapes["features.0.conv1.0.weight"][1] -= n["stem"]
    shapes["features.1.conv1.0.weight"][1] -= n["features.0.conv6"]
    shapes["features.1.conv6.0.weight"][1] -= n["features.0.conv6"] + n["features.1.conv1"]
    shapes["features.1.conv2.0.weight"][1] -= n["features.1.conv1"]
    shapes["features.1.conv3.0.weight"][1] -= n["features.1.conv2"]
    shapes["features.2.conv4.0.weight"][1] -= n["features.2.conv3"]
    shapes["features.2.conv6.0.weight"][1] -= n["features.2.conv3"]
    shapes["features.3.conv6.0.weight"][1] -= n["features.3.conv5"]
    shapes["head.3.0.weight"][1] -= n["head.2"]
    shapes["classifier.0.weight"] = [10, model.cfg.num_features - n["head.3"]]
    assert mid[1] == 64  # the table above assumes 42_B widths
    return {k: tuple(v) for k, v in shapes.items()}


def test_prune_removes_exactly_the_zeroed_channels(trained42b):
    model = build("selecsls42b", num_classes=10)
    model.load_state_dict(trained42b.state_dict())
    model.double().eval()  # float64, so the check below is about the maths, not round-off
    for layer, (channels, beta) in ZEROED.items():
        zero_channels(model, layer, channels, beta)
    before = snapshot(model)
    pruned = prune(model, gamma_thresh=1e-3)
    got = {k: tuple(v.shape) for k, v in pruned.state_dict().items() if k.endswith(".0.weight")}
    assert got == expected_shapes(model, ZEROED)
    x = image().double()
    with torch.no_grad():
        ref = model(x)
        out = pruned(x)
    assert rel_err(out, ref) < 1e-9
    assert_unchanged(model, before)


@pytest.fixture(scope="module")
def core42b(trained42b):
    """float64 features_only core with trained42b's weights (a backbone-only load)."""
    core = build("selecsls42b", features_only=True)
    load_checkpoint(core, trained42b.state_dict())
    return core.double().eval()


def test_prune_core_keeps_output_widths(core42b):
    core = copy.deepcopy(core42b)
    zero_channels(core, "features.1.conv1", [1, 2, 3], 0.5)
    zero_channels(core, "features.3.conv6", [0, 1], 0.3)  # the stride-8 output: must stay
    zero_channels(core, "features.5.conv6", [7], 0.3)     # the stride-16 output: must stay
    pruned = prune(core)
    assert pruned.features[1].conv1[0].weight.shape[0] == 61
    assert pruned.features[3].conv6[0].weight.shape[0] == 288
    assert pruned.features[5].conv6[0].weight.shape[0] == 480
    x = image().double()
    with torch.no_grad():
        ref, out = core(x), pruned(x)
    assert out.stride8.shape == ref.stride8.shape and out.stride16.shape == ref.stride16.shape
    assert rel_err(out, ref) < 1e-9


def test_prune_survives_one_channel_layers(core42b):
    core = copy.deepcopy(core42b)
    zero_channels(core, "features.0.conv2", list(range(1, 64)), 0.0)  # one survivor (-> 3x3)
    zero_channels(core, "features.0.conv4", list(range(64)), 0.0)     # none survive
    before = snapshot(core)
    pruned = prune(core)
    block = pruned.features[0]
    assert block.conv2[0].weight.shape == (1, 64, 1, 1)
    assert block.conv3[0].weight.shape == (32, 1, 3, 3)
    assert block.conv4[0].weight.shape == (1, 32, 1, 1)  # strongest channel kept
    assert block.conv5[0].weight.shape == (32, 1, 3, 3)
    x = image().double()
    with torch.no_grad():
        ref, out = core(x), pruned(x)
    assert rel_err(out, ref) < 1e-9
    assert_unchanged(core, before)


def test_prune_rejects_fused_models(trained42b):
    with pytest.raises(TypeError, match="already fused"):
        prune(fuse_bn(trained42b))


def test_every_config_prunes_and_fuses():
    x = image().double()
    for name in ("selecsls60", "selecsls84"):  # 42's core is covered above
        torch.manual_seed(7)
        core = build(name, features_only=True).double().eval()  # BN at init: bookkeeping only
        zero_channels(core, "features.1.conv1", [0, 1], 0.5)
        zero_channels(core, "features.2.conv6", [5, 6], 0.0)  # stage-first: skip + 3x3 input
        pruned = prune(core)
        assert pruned.features[1].conv1[0].weight.shape[0] == 62
        assert pruned.features[3].conv1[0].weight.shape[1] == core.cfg.blocks[3].in_chs - 2
        with torch.no_grad():
            ref, out = core(x), pruned(x)
        assert rel_err(out, ref) < 1e-9, name


def test_constants_folded_into_3x3_consumers_are_exact_off_the_border(core42b):
    core = copy.deepcopy(core42b)
    zero_channels(core, "stem", [0, 1], 0.5)  # ReLU(0.5) feeds features.0.conv1 (3x3, pad 1)
    pruned = prune(core)
    assert pruned.stem[0].weight.shape[0] == 30
    seen = {}
    core.features[0].conv1.register_forward_hook(lambda m, i, o: seen.setdefault("ref", o))
    pruned.features[0].conv1.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        core(image().double())
        pruned(image().double())
    ref, out = seen["ref"], seen["out"]
    assert rel_err(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1]) < 1e-9
    assert rel_err(out[..., :1, :], ref[..., :1, :]) > 1e-6  # zero padding sees no constant
