"""Stage I network, its losses and masks, and that the training step actually learns."""
from pathlib import Path

import numpy as np
import pytest
import torch

from xnect_app import skeleton
from xnect_app.nn.stage1 import Stage1Config, Stage1Net
from xnect_app.pose.synthetic import random_scene
from xnect_app.train.losses import stage1_loss
from xnect_app.train.trainer import collate_targets, target_masks


@pytest.mark.parametrize("backbone", ["selecsls60", "selecsls42b"])
def test_output_maps_are_stride_8_with_the_documented_channels(backbone):
    net = Stage1Net(Stage1Config(backbone=backbone)).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 160, 256) * 255)
    assert out.heatmaps.shape == (2, skeleton.NUM_JOINTS_2D, 20, 32)
    assert out.pafs.shape == (2, skeleton.NUM_PAF_CHANNELS, 20, 32)
    assert out.enc3d.shape == (2, 3 * skeleton.NUM_JOINTS_3D, 20, 32)


def test_output_layers_are_plain_convs_so_signed_values_are_possible():
    net = Stage1Net(Stage1Config(backbone="selecsls42b"))
    for layer in (net.b2d_out, net.b3d_out):
        assert isinstance(layer, torch.nn.Conv2d) and layer.bias is not None
    with torch.no_grad():
        net.b3d_out.bias.fill_(-1.0)
        out = net.eval()(torch.rand(1, 3, 64, 64) * 255)
    assert (out.enc3d < 0).any()


def _randomise_bn(net):
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_inference_runs_a_bn_folded_nhwc_snapshot_with_the_same_maps():
    net = Stage1Net(Stage1Config(backbone="selecsls42b"))
    _randomise_bn(net)
    net.eval()
    x = torch.rand(2, 3, 96, 128) * 255
    with torch.no_grad():
        net.fast_dense = False
        ref = net(x)
        assert net._fast_exec is None
        net.fast_dense = True
        got = net(x)
    assert net._fast_exec is not None
    assert not any(k.startswith("_fast_exec") for k in net.state_dict())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net._fast_exec.modules())
    for a, b in zip(ref, got):
        assert b.is_contiguous()
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    # with autograd on (e.g. gradients w.r.t. the input) the modules themselves run
    xg = x.clone().requires_grad_(True)
    net(xg).heatmaps.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    # new weights drop the snapshot, so it never runs stale weights
    net.load_state_dict(Stage1Net(Stage1Config(backbone="selecsls42b")).state_dict())
    assert net._fast_exec is None
    with torch.no_grad():
        net.fast_dense = False
        ref = net(x)
        net.fast_dense = True
        torch.testing.assert_close(net(x).pafs, ref.pafs, rtol=1e-4, atol=1e-5)
    net.train()
    assert net._fast_exec is None


def test_masks_switch_off_joint_types_the_source_does_not_label_and_ignored_people():
    labelled = np.ones(19, bool)
    labelled[0] = False  # e.g. COCO has no head top
    ignore = np.zeros((64, 64), np.uint8)
    ignore[:16, :16] = 1
    hm, paf = target_masks(labelled, ignore, (8, 8), 8)
    assert hm[0].sum() == 0 and hm[1].sum() == 64 - 4
    neck_head = skeleton.LIMBS_2D.index((1, 0))
    assert paf[2 * neck_head].sum() == 0 and paf[2 * neck_head + 1].sum() == 0
    assert paf[2 * skeleton.LIMBS_2D.index((1, 2))].sum() == 64 - 4


def _synthetic_batch(n=2, size=(96, 96)):
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(n):
        sc = random_scene(rng, 2, image_size=size, height_px=(50, 80))
        img = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        samples.append({"image": img, "kp2d": sc.kp2d.astype(np.float32), "kp3d_mm": sc.kp3d_rel_mm,
                        "labelled_2d": np.ones(19, bool), "ignore_mask": np.zeros(size[::-1], np.uint8)})
    return collate_targets(samples)


def test_a_few_training_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    imgs, targets = _synthetic_batch()
    net = Stage1Net(Stage1Config(backbone="selecsls42b")).train()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    losses = []
    for _ in range(8):
        loss, parts = stage1_loss(net(imgs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts)
    assert losses[-1]["total"] < 0.6 * losses[0]["total"]
    assert losses[0]["enc3d"] > 0  # the 3D branch is supervised


def test_the_heatmap_weight_scales_the_heatmap_term_and_the_logged_parts_stay_unweighted():
    """`xnect-train stage1 --heatmap-weight W`: the heatmap term counts W times in the loss that
    trains the network; the per-part losses in the log stay comparable across runs."""
    import dataclasses
    from xnect_app.train.losses import LossWeights
    torch.manual_seed(0)
    imgs, targets = _synthetic_batch()
    with torch.no_grad():
        out = Stage1Net(Stage1Config(backbone="selecsls42b")).eval()(imgs)
    _, base = stage1_loss(out, targets)
    total, parts = stage1_loss(out, targets, dataclasses.replace(LossWeights(), heatmap=3.0))
    assert parts["heatmap"] == base["heatmap"] and parts["paf"] == base["paf"]
    _, lazy = stage1_loss(out, targets, as_float=False)  # what the trainer logs, without a sync per step
    assert all(isinstance(v, torch.Tensor) and float(v) == pytest.approx(base[k]) for k, v in lazy.items())
    assert total.item() == pytest.approx(base["total"] + 2.0 * base["heatmap"], rel=1e-5)


def test_training_continues_from_an_exported_weights_file(tmp_path):
    from xnect_app.train.release import export_weights
    from xnect_app.train.trainer import TrainConfig, Trainer

    first = Trainer(TrainConfig(out_dir=str(tmp_path / "a"), backbone="selecsls42b"))
    first.step = 321
    first.history = [{"step": 321, "total": 1.0}]
    first.save()
    export_weights(str(tmp_path / "a" / "last.pt"), None, str(tmp_path / "w.pt"))
    second = Trainer(TrainConfig(out_dir=str(tmp_path / "b"), backbone="selecsls42b",
                                 init_weights=str(tmp_path / "w.pt")))
    assert second.step == 321 and second.history == first.history
    assert second.lr_at(321) < 0.01 * second.cfg.lr  # warms up again with a fresh optimizer
    a = first.net.state_dict()["b2d_out.weight"]
    b = second.net.state_dict()["b2d_out.weight"]
    assert torch.allclose(a.half().float(), b)


BUNDLED = Path(__file__).resolve().parents[1] / "models" / "xnect_selecsls60.pt"


@pytest.mark.skipif(not BUNDLED.is_file(), reason="bundled weights missing")
def test_export_keeps_the_stage2_of_an_existing_weights_file(tmp_path):
    """`xnect-train export --stage2 models/xnect_selecsls60.pt`: a new Stage I with the bundled lifter."""
    from xnect_app.train.release import export_weights
    from xnect_app.train.trainer import TrainConfig, Trainer

    Trainer(TrainConfig(out_dir=str(tmp_path / "a"), backbone="selecsls42b")).save()
    export_weights(str(tmp_path / "a" / "last.pt"), str(BUNDLED), str(tmp_path / "w.pt"))
    old = torch.load(BUNDLED, weights_only=True)
    new = torch.load(tmp_path / "w.pt", weights_only=True)
    assert new["stage2_config"] == old["stage2_config"]
    assert new["meta"]["stage2_step"] == old["meta"]["stage2_step"] > 0
    assert new["stage2"].keys() == old["stage2"].keys()
    assert all(torch.equal(new["stage2"][k], old["stage2"][k]) for k in old["stage2"])
    with pytest.raises(ValueError, match="no Stage II"):  # a file exported without one
        export_weights(str(tmp_path / "a" / "last.pt"), _without_stage2(tmp_path / "w.pt"), str(tmp_path / "x.pt"))


def test_export_with_several_stage2_makes_an_ensemble_the_estimator_averages(tmp_path):
    """`--stage2 A B`: both Stage II networks in one file; PoseEstimator's Stage II gives their mean
    pose, and an ensemble file given again joins with its members."""
    from xnect_app.weights import load_weights
    from xnect_app.nn.stage2 import Stage2Config, Stage2Ensemble, Stage2Net
    from xnect_app.train.release import export_weights
    from xnect_app.train.trainer import TrainConfig, Trainer

    Trainer(TrainConfig(out_dir=str(tmp_path / "a"), backbone="selecsls42b")).save()
    stage1 = str(tmp_path / "a" / "last.pt")
    nets = []
    for i, use_enc in enumerate((False, True)):
        torch.manual_seed(i)
        net = Stage2Net(Stage2Config(width=64, depth=1, use_encodings=use_enc)).eval()
        torch.nn.init.normal_(net.out.weight, std=0.1)
        torch.save({"model": net.state_dict(), "stage2_config": net.cfg.to_dict(), "step": 100 * (i + 1)},
                   tmp_path / f"s2_{i}.pt")
        nets.append(net)
    export_weights(stage1, [str(tmp_path / "s2_0.pt"), str(tmp_path / "s2_1.pt")], str(tmp_path / "w.pt"), half=False)
    doc = torch.load(tmp_path / "w.pt", weights_only=True)
    assert doc["meta"]["stage2_step"] == 200 and doc["meta"]["stage2_source_steps"] == [100, 200]
    _, ens = load_weights(tmp_path / "w.pt")
    assert isinstance(ens, Stage2Ensemble) and len(ens.members) == 2
    rng = np.random.default_rng(0)
    f = torch.from_numpy(rng.normal(size=(4, 19, 66)).astype(np.float32))
    r = torch.from_numpy(rng.normal(scale=0.3, size=(4, 21, 3)).astype(np.float32))
    v = torch.ones(4, 21)
    with torch.no_grad():
        torch.testing.assert_close(ens.eval()(f, r, v), (nets[0](f, r, v) + nets[1](f, r, v)) / 2)

    export_weights(stage1, [str(tmp_path / "w.pt"), str(tmp_path / "s2_0.pt")], str(tmp_path / "w3.pt"))
    _, ens3 = load_weights(tmp_path / "w3.pt")
    assert len(ens3.members) == 3 and [m.cfg.use_encodings for m in ens3.members] == [False, True, False]

    other = Stage2Net(Stage2Config(width=64, depth=2))
    torch.save({"model": other.state_dict(), "stage2_config": {**other.cfg.to_dict(), "depth": 1}, "step": 1},
               tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="do not form an ensemble"):
        export_weights(stage1, [str(tmp_path / "s2_0.pt"), str(tmp_path / "bad.pt")], str(tmp_path / "x.pt"))


def _without_stage2(path):
    doc = torch.load(path, weights_only=True)
    for k in ("stage2", "stage2_config"):
        doc.pop(k)
    out = path.with_name("no_stage2.pt")
    torch.save(doc, out)
    return str(out)


def test_a_forward_hook_fires_once_on_the_fast_dense_path():
    net = Stage1Net(Stage1Config(backbone="selecsls42b")).eval()
    calls = []
    net.register_forward_hook(lambda mod, inp, out: calls.append(out.heatmaps))
    with torch.no_grad():
        out = net(torch.rand(1, 3, 64, 96) * 255)
    assert net._fast_exec is not None and len(calls) == 1 and calls[0] is out.heatmaps


def test_the_moving_average_of_the_weights_is_exported_and_survives_a_resume(tmp_path):
    from xnect_app.weights import load_checkpoint
    from xnect_app.train.release import export_weights
    from xnect_app.train.trainer import TrainConfig, Trainer

    run = tmp_path / "run"
    trainer = Trainer(TrainConfig(out_dir=str(run), backbone="selecsls42b", ema_decay=0.5))
    weight = trainer.net.b2d_out.weight
    start = weight.detach().clone()
    bn_mean = next(m for m in trainer.net.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean
    for _ in range(3):  # steps move the weights by 0, +1, +1: average start + 1.25 at decay 0.5
        trainer._update_ema()
        with torch.no_grad():
            weight.add_(1.0)
            bn_mean.add_(2.0)
    with torch.no_grad():
        weight.sub_(1.0)
        bn_mean.sub_(2.0)
    trainer.save()

    export_weights(str(run / "last.pt"), None, str(tmp_path / "avg.pt"), half=False)
    export_weights(str(run / "last.pt"), None, str(tmp_path / "raw.pt"), half=False, averaged=False)
    avg = torch.load(tmp_path / "avg.pt", weights_only=True)
    raw = torch.load(tmp_path / "raw.pt", weights_only=True)
    assert torch.allclose(avg["stage1"]["b2d_out.weight"], start + 1.25)
    assert torch.allclose(raw["stage1"]["b2d_out.weight"], start + 2.0)
    assert avg["meta"]["stage1_weights"] == "moving average" and raw["meta"]["stage1_weights"] == "raw"
    bn_key = next(k for k in avg["stage1"] if k.endswith("running_mean"))
    assert torch.allclose(avg["stage1"][bn_key], raw["stage1"][bn_key] - 1.5)  # BN statistics averaged too

    resumed = Trainer(TrainConfig(out_dir=str(run), backbone="selecsls42b", ema_decay=0.5))
    assert resumed.ema_updates == 3
    assert torch.allclose(resumed.ema_net.b2d_out.weight, start + 1.25)
    assert torch.allclose(resumed.net.b2d_out.weight, start + 2.0)
    net, _ = load_checkpoint(run / "last.pt")  # xnect-eval --checkpoint sees what export writes
    assert torch.allclose(net.b2d_out.weight, start + 1.25)
    assert Trainer(TrainConfig(out_dir=str(tmp_path / "off"), backbone="selecsls42b", ema_decay=0)).ema_net is None


def test_weight_averaging_every_k_steps_is_a_plain_mean_of_the_snapshots(tmp_path):
    from xnect_app.train.release import export_weights
    from xnect_app.train.trainer import TrainConfig, Trainer

    run = tmp_path / "run"
    trainer = Trainer(TrainConfig(out_dir=str(run), backbone="selecsls42b", ema_decay=0, swa_every=2))
    weight = trainer.net.b2d_out.weight
    start = weight.detach().clone()
    for step in range(1, 8):  # the weights after step s are start + s; snapshots at steps 2, 4, 6
        with torch.no_grad():
            weight.copy_(start + step)
        trainer.step = step
        trainer._update_ema()
    assert trainer.ema_updates == 3
    assert torch.allclose(trainer.ema_net.b2d_out.weight, start + 4.0)
    trainer.save()
    export_weights(str(run / "last.pt"), None, str(tmp_path / "swa.pt"), half=False)
    assert torch.allclose(torch.load(tmp_path / "swa.pt", weights_only=True)["stage1"]["b2d_out.weight"], start + 4.0)

    resumed = Trainer(TrainConfig(out_dir=str(run), backbone="selecsls42b", ema_decay=0, swa_every=2))
    assert resumed.ema_updates == 3 and torch.allclose(resumed.ema_net.b2d_out.weight, start + 4.0)
    # a resume that switches to a moving average starts it afresh from the current weights
    switched = Trainer(TrainConfig(out_dir=str(run), backbone="selecsls42b", ema_decay=0.9))
    assert switched.ema_updates == 0 and torch.allclose(switched.ema_net.b2d_out.weight, start + 7.0)


def test_export_of_several_checkpoints_is_the_mean_of_their_weights(tmp_path):
    from xnect_app.train.release import export_weights
    from xnect_app.train.trainer import TrainConfig, Trainer

    paths = []
    for i, shift in enumerate((1.0, 3.0)):
        trainer = Trainer(TrainConfig(out_dir=str(tmp_path / f"run{i}"), backbone="selecsls42b", ema_decay=0))
        if i == 0:
            start = trainer.net.b2d_out.weight.detach().clone()
        with torch.no_grad():
            trainer.net.b2d_out.weight.copy_(start + shift)
        trainer.step = 100 * (i + 1)
        trainer.save()
        paths.append(str(tmp_path / f"run{i}" / "last.pt"))
    export_weights(paths, None, str(tmp_path / "soup.pt"), half=False)
    doc = torch.load(tmp_path / "soup.pt", weights_only=True)
    assert torch.allclose(doc["stage1"]["b2d_out.weight"], start + 2.0)
    assert doc["meta"]["stage1_source_steps"] == [100, 200] and doc["meta"]["stage1_step"] == 200
    other = Trainer(TrainConfig(out_dir=str(tmp_path / "other"), backbone="selecsls60", ema_decay=0))
    other.save()
    with pytest.raises(ValueError, match="differs"):
        export_weights([paths[0], str(tmp_path / "other" / "last.pt")], None, str(tmp_path / "bad.pt"))


from shared_data import DATA, needs_data  # noqa: E402


@needs_data("lspet")
def test_export_can_reestimate_the_batchnorm_statistics_on_training_crops(tmp_path):
    """`xnect-train export --bn-crops N`: BN statistics from N real training crops, every other
    weight as trained (for a GPU run's moving average, whose averaged statistics were off)."""
    from xnect_app.train.release import export_weights
    from xnect_app.train.trainer import TrainConfig, Trainer

    Trainer(TrainConfig(out_dir=str(tmp_path / "a"), backbone="selecsls42b", size=(256, 160))).save()
    export_weights(str(tmp_path / "a" / "last.pt"), None, str(tmp_path / "plain.pt"), half=False)
    export_weights(str(tmp_path / "a" / "last.pt"), None, str(tmp_path / "bn.pt"), half=False,
                   bn_crops=16, data_root=DATA)
    plain, bn = (torch.load(tmp_path / f, weights_only=True) for f in ("plain.pt", "bn.pt"))
    assert bn["meta"]["bn_recalibrated_crops"] == 16
    stats = [k for k in plain["stage1"] if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(plain["stage1"][k], bn["stage1"][k]) for k in stats)
    assert all(int(bn["stage1"][k]) == 2 for k in bn["stage1"] if k.endswith("num_batches_tracked"))
    others = [k for k in plain["stage1"] if "running_" not in k and "num_batches" not in k]
    assert all(torch.equal(plain["stage1"][k], bn["stage1"][k]) for k in others)
    torch.manual_seed(12345)  # as another process would start: the export must not depend on it
    export_weights(str(tmp_path / "a" / "last.pt"), None, str(tmp_path / "again.pt"), half=False,
                   bn_crops=16, data_root=DATA)
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert all(torch.equal(again["stage1"][k], bn["stage1"][k]) for k in stats)
