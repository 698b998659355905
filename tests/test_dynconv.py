"""DynConv: masks, dilation, sparsity losses, and sparse execution equal to dense execution."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xnect_app.bench.dynconv import MotionMask, frame_agreement, oks, unpaired_scores
from xnect_app.runtime.motion import MotionGate
from xnect_app.nn import dynconv
from xnect_app.nn.dynconv import (LayerCost, Positions, SparseConv, SparseDeconv2x, SparseMap,
                                  bound_schedule, dilate, sparsity_loss)
from xnect_app.nn.stage1 import Stage1Config, Stage1Net
from xnect_app.types import Person

ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small maps: one thread is faster, and robust on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise_bn(net: torch.nn.Module) -> None:
    """Non-trivial BN statistics, so that BN folding is really exercised."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


@pytest.fixture(scope="module")
def net42():
    torch.manual_seed(0)
    net = Stage1Net(Stage1Config(backbone="selecsls42b", dynconv=True)).eval()
    _randomise_bn(net)
    return net


def _image(n=2, h=96, w=160, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def _close(a, b, tol=ATOL):
    """Equal up to float rounding: max |a - b| <= tol * max(1, max |a|) for every map."""
    for x, y in zip(a, b):
        assert x.shape == y.shape
        scale = max(1.0, x.abs().max().item())
        assert (x - y).abs().max().item() <= tol * scale, (x - y).abs().max().item()


# --------------------------------------------------------------------------- sparse == dense

def test_sparse_equals_the_plain_dense_network_when_the_mask_is_all_ones():
    torch.manual_seed(0)
    net = Stage1Net(Stage1Config(backbone="selecsls42b")).eval()  # no DynConv at all
    _randomise_bn(net)
    x = _image()
    with torch.no_grad():
        dense = net(x)
        net.set_sparse(True, mask_override=torch.ones(12, 20), dense_above=2.0)
        sparse = net(x)
    assert net.sparse_stats.sparse and net.sparse_stats.active == 1.0
    _close(dense, sparse)
    assert dense.heatmaps.abs().max() > 0.05  # the comparison is not between zeros


def test_sparse_equals_dense_to_float64_precision():
    """The equality is algebraic, not approximate: in float64 the two paths agree to ~1e-12."""
    torch.manual_seed(0)
    net = Stage1Net(Stage1Config(backbone="selecsls42b")).double().eval()
    _randomise_bn(net)
    x = _image(n=1).double()
    mask = torch.rand(1, 1, 12, 20, generator=torch.Generator().manual_seed(2)) > 0.6
    with torch.no_grad():
        dense = net(x)
        net.set_sparse(True, mask_override=torch.ones(12, 20), dense_above=2.0)
        ones = net(x)
        net.set_sparse(False, mask_override=mask)
        masked = net(x)
        net.set_sparse(True, mask_override=mask, dense_above=2.0)
        sparse = net(x)
    _close(dense, ones, 1e-10)
    _close(masked, sparse, 1e-10)


@pytest.mark.parametrize("seed,first_block", [(0, 2), (1, 2), (2, 1), (3, 0)])
def test_sparse_equals_masked_dense_for_random_masks(net42, seed, first_block):
    """Exact for any mask, with the masked part starting at stride 8 (2) or stride 4 (1, 0)."""
    x = _image(seed=seed)
    mask = torch.rand(2, 1, 12, 20, generator=torch.Generator().manual_seed(seed)) > 0.75
    with torch.no_grad():
        net42.set_sparse(False, mask_override=mask, first_block=first_block)
        ref = net42(x)
        net42.set_sparse(True, mask_override=mask, dense_above=2.0, first_block=first_block)
        sparse = net42(x)
    assert net42.sparse_stats.sparse
    _close(ref, sparse)
    off = ~mask.expand_as(ref.heatmaps)
    assert ref.heatmaps[off].abs().max() == 0 and sparse.heatmaps[~off].abs().max() > 0
    net42.set_sparse(False, None)


@pytest.mark.parametrize("background", [False, True])
def test_bf16_sparse_path_follows_the_float32_one_and_returns_float32(net42, background):
    """bfloat16 inference (PoseEstimator(precision="bf16")) runs the sparse layers in bfloat16:
    within bfloat16 rounding of the float32 sparse result, with or without a background fill."""
    x, bg = _image(seed=6), _image(n=1, seed=7)
    mask = torch.rand(2, 1, 12, 20, generator=torch.Generator().manual_seed(6)) > 0.7
    outs = []
    with torch.no_grad():
        for bf16 in (False, True):
            net42.bf16_inference = bf16
            net42.set_sparse(True, mask_override=mask, dense_above=2.0, background=bg if background else None)
            outs.append(net42(x))
            assert net42.sparse_stats.sparse and net42._sparse_exec.dtype == (torch.bfloat16 if bf16 else torch.float32)
    net42.bf16_inference = False
    net42.set_sparse(False, None, background=None)
    for a, b in zip(*outs):
        assert b.dtype == torch.float32 and not torch.equal(a, b)
        assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_dense_fallback_gives_the_same_maps_and_says_so(net42):
    x = _image(seed=3)
    mask = torch.zeros(12, 20)
    mask[2:9, 4:12] = 1
    with torch.no_grad():
        net42.set_sparse(True, mask_override=mask, dense_above=2.0)
        sparse = net42(x)
        cost = net42.sparse_stats.cost_fraction
        net42.set_sparse(True, mask_override=mask, dense_above=-1.0)
        fallback = net42(x)
    assert not net42.sparse_stats.sparse and 0 < cost < 1
    _close(sparse, fallback)
    net42.set_sparse(False, None, dense_above=dynconv.DENSE_ABOVE)


def test_background_fill_is_exact_too_and_changes_the_inactive_cells(net42):
    x, bg = _image(n=2, seed=4), _image(n=1, seed=5)  # one background for the whole batch
    mask = torch.zeros(12, 20)
    mask[3:8, 5:10] = 1
    with torch.no_grad():
        net42.set_sparse(True, mask_override=mask, dense_above=2.0)
        zero_fill = net42(x)
        cost_zero_fill = net42.sparse_stats.cost_fraction
        net42.set_sparse(True, mask_override=mask, dense_above=2.0, background=bg)
        sparse = net42(x)
        cost_background = net42.sparse_stats.cost_fraction
        net42.set_sparse(True, mask_override=mask, dense_above=-1.0)
        fallback = net42(x)
    _close(sparse, fallback)
    assert (sparse.heatmaps - zero_fill.heatmaps).abs().max() > 1e-3
    # with a background every layer reads it around the mask: no dilated rings are computed
    active = float(mask.mean())
    assert cost_background < 1.3 * active < cost_zero_fill
    # the next frames, with the mask elsewhere: the cells computed before hold the background again
    for rows, cols in ((slice(6, 11), slice(12, 18)), (slice(0, 4), slice(0, 6))):
        mask = torch.zeros(12, 20)
        mask[rows, cols] = 1
        with torch.no_grad():
            net42.set_sparse(True, mask_override=mask, dense_above=2.0, background=False)
            sparse = net42(x)
            net42.set_sparse(True, mask_override=mask, dense_above=-1.0, background=False)
            fallback = net42(x)
        assert net42.sparse_stats.mask.sum() == mask.sum() * 2
        _close(sparse, fallback)
    net42.set_sparse(False, None, dense_above=dynconv.DENSE_ABOVE, background=None)


@pytest.mark.parametrize("first_block", [0, 2])
def test_a_frame_equal_to_the_background_gives_the_dense_result_for_any_mask(first_block):
    """Motion masks on a static scene: skipped cells (blocks and output maps) hold what a dense
    pass computes there, so people and objects standing still are not lost."""
    torch.manual_seed(3)
    net = Stage1Net(Stage1Config(backbone="selecsls42b")).eval()
    _randomise_bn(net)
    x = _image(n=1, seed=7)
    mask = torch.zeros(12, 20)
    mask[2:6, 12:16] = 1
    with torch.no_grad():
        dense = net(x)
        for above in (2.0, -1.0):  # sparse path, masked-dense fallback
            net.set_sparse(True, mask_override=mask, dense_above=above, background=x, first_block=first_block)
            _close(dense, net(x), tol=1e-4)
        net.set_sparse(True, mask_override=mask, dense_above=2.0, background=None)
        zero_fill = net(x)
    assert (zero_fill.heatmaps[..., 0, 0] == 0).all()  # off the mask: nothing without a background
    net.set_sparse(False, None)


def test_learned_mask_drives_the_sparse_path_and_an_empty_mask_gives_empty_maps(net42):
    x = _image(seed=6)
    with torch.no_grad():
        net42.set_sparse(False, mask_unit=True)
        ref = net42(x)  # masked-dense with the mask unit's own hard mask
        net42.set_sparse(True, dense_above=2.0)
        _close(ref, net42(x))
        bias = net42.mask_unit.conv.bias.clone()
        net42.mask_unit.conv.bias.fill_(-100.0)
        out = net42(x)
        net42.mask_unit.conv.bias.copy_(bias)
    assert net42.sparse_stats.active == 0.0 and net42.sparse_stats.cost_fraction == 0.0
    assert all(t.abs().max() == 0 for t in out)
    net42.set_sparse(False)


def test_switching_sparse_on_needs_a_mask_source():
    net = Stage1Net(Stage1Config(backbone="selecsls42b"))
    with pytest.raises(ValueError, match="mask"):
        net.set_sparse(True)
    gated = Stage1Net(Stage1Config(backbone="selecsls42b", dynconv=True))
    with pytest.raises(ValueError, match="mask_override"):
        gated.set_sparse(True, first_block=1)  # the mask unit reads block 1's output


def test_dynconv_off_keeps_the_state_dict_and_dynconv_on_only_adds_the_mask_unit():
    torch.manual_seed(0)
    plain = Stage1Net(Stage1Config(backbone="selecsls42b"))
    torch.manual_seed(0)
    gated = Stage1Net(Stage1Config(backbone="selecsls42b", dynconv=True))
    extra = set(gated.state_dict()) - set(plain.state_dict())
    assert {k for k in extra if not k.startswith("mask_unit.body.")} == {
        "mask_unit.conv.weight", "mask_unit.conv.bias", "mask_unit.fc.weight"}
    assert all(k.startswith("mask_unit.") for k in extra)
    assert all(torch.equal(v, gated.state_dict()[k]) for k, v in plain.state_dict().items())
    missing = gated.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert set(missing) == extra


# --------------------------------------------------------------------------- layers on any positions

def _positions(mask):
    return Positions.from_mask(mask.float())


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (1, 1)])
def test_sparse_conv_matches_conv2d_on_random_positions(kernel, stride):
    g = torch.Generator().manual_seed(kernel + stride)
    x = torch.randn(2, 8, 9, 11, generator=g)
    w, b = torch.randn(6, 8, kernel, kernel, generator=g), torch.randn(6, generator=g)
    ref = F.relu(F.conv2d(x, w, b, stride, kernel // 2))
    mask = torch.rand(2, 1, *ref.shape[-2:], generator=g) > 0.6
    pos = _positions(mask)
    rows = SparseConv(w, b, stride)(SparseMap.from_dense(x), pos)
    assert rows.shape == (pos.count + 1, 6) and rows[-1].abs().max() == 0
    expect = ref.permute(0, 2, 3, 1).reshape(-1, 6)[pos.idx]
    assert (rows[:-1] - expect).abs().max() < ATOL


def test_sparse_deconv_matches_conv_transpose2d_on_random_positions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 5, 7, generator=g)
    w, b = torch.randn(8, 3, 4, 4, generator=g), torch.randn(12, generator=g)
    ref = F.relu(F.conv_transpose2d(x, w, b, stride=2, padding=1, groups=4))
    mask = torch.rand(1, 1, 10, 14, generator=g) > 0.5
    mask[0, 0, 0, 0] = mask[0, 0, -1, -1] = True  # corners: taps off the input
    pos = _positions(mask)
    rows = SparseDeconv2x(w, b, groups=4)(SparseMap.from_dense(x), pos)
    expect = ref.permute(0, 2, 3, 1).reshape(-1, 12)[pos.idx]
    assert (rows[:-1] - expect).abs().max() < ATOL


def test_a_sparse_map_reads_zero_off_its_cells_and_on_padding():
    pos = _positions(torch.tensor([[[[1, 0], [0, 1]]]]))
    m = SparseMap.from_rows(pos, torch.tensor([[1.0], [2.0], [0.0]]))
    assert m.gather(torch.tensor([0, 1, 2, 3, 4])).flatten().tolist() == [1, 0, 0, 2, 0]
    assert m.to_dense().flatten().tolist() == [1, 0, 0, 2]


# --------------------------------------------------------------------------- dilation

def test_dilation_grows_a_cell_to_its_neighbourhood_and_stops_at_the_border():
    m = torch.zeros(1, 1, 7, 7)
    m[0, 0, 3, 3] = 1
    m[0, 0, 0, 6] = 1
    d1 = dilate(m)
    assert d1[0, 0, 2:5, 2:5].sum() == 9 and d1[0, 0, 0:2, 5:7].sum() == 4 and d1.sum() == 13
    assert dilate(m, 2)[0, 0, 1:6, 1:6].sum() == 25
    assert torch.equal(dilate(m, 2), dilate(d1))
    down = dynconv.downsample_mask(m)
    assert down.shape == (1, 1, 4, 4) and down[0, 0, 1, 1] == 1 and down[0, 0, 0, 3] == 1 and down.sum() == 2


def test_a_block_needs_the_dilated_sets_to_be_exact(net42):
    """conv1/conv2 must run on D^2 and conv3/conv4 on D: without the dilation the result is wrong."""
    block = net42.core.features[3]  # stride-1, non-first block of SelecSLS-42b
    fused = dynconv.SparseStage1(net42, net42.cfg.dynconv_from).core.features[3]
    chs = block.conv1[0].in_channels  # 144 in and 144 skip channels in SelecSLS-42b's block 3
    x, skip = torch.rand(1, chs, 8, 10), torch.rand(1, chs, 8, 10)
    ref = fused([x, skip])[0]
    mask = torch.zeros(1, 1, 8, 10)
    mask[0, 0, 3:5, 4:7] = 1
    p = [Positions.from_mask(dilate(mask, k)) for k in range(3)]
    sb = dynconv._SparseBlock(fused)
    xs, ss = SparseMap.from_dense(x), SparseMap.from_dense(skip)
    exact = sb(xs, ss, p[0], p[1], p[2]).to_dense()
    undilated = sb(xs, ss, p[0], p[0], p[0]).to_dense()
    on = mask.expand_as(ref) > 0
    assert (exact[on] - ref[on]).abs().max() < 1e-4
    assert (undilated[on] - ref[on]).abs().max() > 1e-2


# --------------------------------------------------------------------------- Gumbel and losses

def test_gumbel_masks_are_hard_with_a_straight_through_gradient():
    logits = torch.tensor([-3.0, -0.1, 0.0, 0.1, 3.0], requires_grad=True)
    m = dynconv.gumbel_mask(logits, tau=1.0, noise=False)
    assert m.tolist() == [0, 0, 1, 1, 1]
    assert torch.equal(m.detach(), dynconv.hard_mask(logits.detach()))
    (m * torch.arange(5.0)).sum().backward()
    sig = torch.sigmoid(logits.detach())
    assert torch.allclose(logits.grad, torch.arange(5.0) * sig * (1 - sig))
    torch.manual_seed(0)
    noisy = dynconv.gumbel_mask(torch.zeros(10000), noise=True)
    assert set(noisy.unique().tolist()) == {0.0, 1.0} and 0.45 < noisy.mean() < 0.55


def test_training_forward_gives_the_mask_unit_a_gradient_through_task_and_sparsity_losses():
    torch.manual_seed(0)
    net = Stage1Net(Stage1Config(backbone="selecsls42b", dynconv=True, dynconv_budget=0.3)).train()
    out = net(_image(n=2, h=64, w=96))
    assert len(net.dynconv_costs) == 5 and net.last_mask.shape == (2, 1, 8, 12)  # blocks 2-5 + heads
    sl = sparsity_loss(net.dynconv_costs, net.cfg.dynconv_budget, epoch=0, epochs=10)
    (out.heatmaps.pow(2).mean() + sl.total).backward()
    g = net.mask_unit.conv.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert 0 < float(sl.fraction.detach()) <= 1


def test_bound_schedule_opens_from_the_budget_to_zero_one_by_a_third_of_training():
    assert bound_schedule(0, 100, 0.25) == (0.25, 0.25)
    lo, hi = bound_schedule(33, 100, 0.25)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(1.0)
    lo, hi = bound_schedule(10, 100, 0.25)
    p = math.cos(math.pi / 2 * 10 / 33) ** 2
    assert (lo, hi) == (pytest.approx(p * 0.25), pytest.approx(1 - p * 0.75))


def test_sparsity_loss_values_on_known_masks():
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2, :] = 1
    full = torch.ones(1, 1, 4, 4)
    costs = [LayerCost("a", [(half, 1.0)]), LayerCost("b", [(full, 3.0)])]
    sl = sparsity_loss(costs, budget=0.25, epoch=0, epochs=10, weight=0.01)
    # network: (8*1 + 16*3) / (16*1 + 16*3) = 56/64
    assert float(sl.fraction) == pytest.approx(56 / 64)
    assert float(sl.network) == pytest.approx((56 / 64 - 0.25) ** 2)
    assert sl.layer_fractions == [0.5, 1.0]
    assert float(sl.layers) == pytest.approx(((0.5 - 0.25) ** 2 + (1.0 - 0.25) ** 2) / 2)
    assert float(sl.total) == pytest.approx(0.01 * (float(sl.network) + float(sl.layers)))
    late = sparsity_loss(costs, budget=0.25, epoch=5, epochs=10)
    assert float(late.layers) == 0.0  # bounds are [0, 1] after a third of training


def test_block_costs_count_each_layer_on_its_dilated_set(net42):
    m = torch.zeros(1, 1, 9, 9)
    m[0, 0, 4, 4] = 1
    block = net42.core.features[3]
    c = dynconv.block_costs("b", block, m)
    macs = [float(getattr(block, f"conv{i}")[0].weight.numel()) for i in range(1, 7)]
    assert float(c.used()) == pytest.approx(25 * (macs[0] + macs[1]) + 9 * (macs[2] + macs[3])
                                            + (macs[4] + macs[5]))
    assert c.total() == pytest.approx(81 * sum(macs))


# --------------------------------------------------------------------------- benchmark helpers

def test_oracle_motion_mask_marks_the_moving_thing_and_respects_the_budget():
    bg = np.full((64, 96, 3), 100, np.uint8)
    frame = bg.copy()
    frame[16:40, 40:56] = 250
    m = MotionMask(bg, margin=1)(frame)
    assert m.shape == (8, 12)
    assert m[2:5, 5:7].all() and m[0, 0] == 0 and m[7, 11] == 0
    capped = MotionMask(bg, margin=1, budget=0.15)(frame)
    assert 0 < capped.mean() <= 0.15 and capped.sum() < m.sum()


def test_oks_agreement_is_one_for_identical_people_and_drops_with_displacement():
    kp = np.zeros((19, 3))
    kp[:, 0] = np.linspace(100, 140, 19)
    kp[:, 1] = np.linspace(50, 200, 19)
    kp[:, 2] = 1
    zeros = np.zeros((21, 3))
    p = Person(track_id=0, score=1.0, kp2d=kp, kp3d_rel_mm=zeros, kp3d_cam_mm=zeros)
    moved = kp.copy()
    moved[:, 0] += 15
    q = Person(track_id=0, score=1.0, kp2d=moved, kp3d_rel_mm=zeros, kp3d_cam_mm=zeros)
    assert oks(kp, kp) == pytest.approx(1.0)
    assert 0 < oks(kp, moved) < 0.9
    assert frame_agreement([p], [p])[0] == pytest.approx(1.0)
    assert frame_agreement([p], [p, q])[0] == pytest.approx(0.5)
    assert frame_agreement([], []) == (1.0, [])
    # people without a counterpart: the extra one, and both of a pair too far apart to be one person
    weak = Person(track_id=0, score=0.25, kp2d=moved, kp3d_rel_mm=zeros, kp3d_cam_mm=zeros)
    far = kp.copy()
    far[:, 0] += 300
    other = Person(track_id=0, score=0.6, kp2d=far, kp3d_rel_mm=zeros, kp3d_cam_mm=zeros)
    assert unpaired_scores([p], [p, weak]) == [0.25]
    assert sorted(unpaired_scores([p], [other])) == [0.6, 1.0]
    assert unpaired_scores([], [weak]) == [0.25] and unpaired_scores([p], [p]) == []


def test_bench_reports_sparse_vs_dense_with_the_causal_motion_mask_and_the_stability_yardstick(tmp_path, capsys):
    import json

    from server_helpers import clip_path
    from xnect_app.bench.dynconv import main
    out = tmp_path / "dyn.json"
    rc = main(["--video", str(clip_path()), "--frames", "3", "--mask", "motion", "--stability",
               "--random-weights", "--backbone", "selecsls42b", "--input-size", "192x320", "--threads", "1",
               "--out", str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["frames"] == 3 and rep["first_masked_block"] == 0 and "CAUSAL" in rep["mask"]
    assert 0 < rep["active_fraction"] < 1 and rep["stage1"]["speedup"] > 0
    assert set(rep["stability"]) == {"jpeg95", "shift_1px", "jpeg95_confident", "shift_1px_confident"}
    assert all(0 <= v["oks_mean_per_frame"] <= 1 for v in rep["stability"].values())
    ag = rep["agreement"]
    assert 0 <= ag["confident_people_score_0.4"]["oks_mean_per_frame"] <= 1
    assert ag["unpaired_people"] <= ag["people_dense"] + ag["people_sparse"]
    text = capsys.readouterr().out
    assert "dense vs dense on the frame jpeg95" in text and "speed-up" in text
    assert "people scoring 0.4 or more" in text and "found by one pass only" in text


def test_bench_margin_sweep_trades_computed_cells_for_agreement(tmp_path, capsys):
    import json

    from server_helpers import clip_path
    from xnect_app.bench.dynconv import main
    out = tmp_path / "margins.json"
    rc = main(["--video", str(clip_path()), "--frames", "2", "--mask", "motion", "--margin", "1,4",
               "--random-weights", "--backbone", "selecsls42b", "--input-size", "192x320", "--threads", "1",
               "--out", str(out)])
    assert rc == 0
    small, large = json.loads(out.read_text())["margins"]
    assert (small["margin"], large["margin"]) == (1, 4)
    assert small["active_fraction"] < large["active_fraction"] and small["cost_fraction"] < large["cost_fraction"]
    table = capsys.readouterr().out.split("margin  active")[1].splitlines()
    assert [line.split()[0] for line in table[1:]] == ["1", "4"]


def test_motion_margin_reaches_the_gates_and_bad_margins_are_refused():
    from xnect_app.estimator import ModelConfig, PoseEstimator
    kw = dict(random_init=True, backbone="selecsls42b", input_size=(192, 128))
    est = PoseEstimator(ModelConfig(dynconv="motion", dynconv_margin=4, **kw))
    assert est.runner.gate.margin == 4 and est.runner.stream_gate("a").margin == 4
    assert PoseEstimator(ModelConfig(dynconv="motion", **kw)).runner.gate.margin == MotionGate().margin
    for bad in (dict(dynconv="motion", dynconv_margin=17), dict(dynconv_margin=3)):
        with pytest.raises(ValueError, match="margin"):
            PoseEstimator(ModelConfig(**kw, **bad))


def test_sparse_path_runs_under_no_grad_after_inference_mode(net42):
    """Kept buffers (gather scratch, background working copies) made under torch.inference_mode()
    must not break a later run without it (torch refuses in-place writes to inference tensors)."""
    x, bg = _image(seed=11), _image(seed=12)
    mask = torch.zeros(12, 20)
    mask[2:7, 4:11] = 1
    for background in (None, bg):
        with torch.inference_mode():
            net42.set_sparse(True, mask_override=mask, dense_above=2.0, background=background)
            first = net42(x).heatmaps.clone()
        with torch.no_grad():
            net42.set_sparse(True, mask_override=mask, dense_above=2.0, background=False)
            again = net42(x).heatmaps
        assert torch.equal(first, again)
    net42.set_sparse(False, None, dense_above=dynconv.DENSE_ABOVE, background=None)
