"""Stage II: its training examples match the real decode path, and it learns to complete poses."""
import numpy as np
import torch

from xnect_app import skeleton
from xnect_app.nn.stage2 import Stage2Config, Stage2Net
from xnect_app.pose.readout import read_3d, stage2_inputs
from xnect_app.pose.synthetic import random_scene
from xnect_app.pose.targets import render_targets, to_map
from xnect_app.train.stage2 import (Stage2TrainConfig, encodings_at_joints, evaluate_stage2, make_batch,
                                    readout_at_joints)


def test_fast_examples_equal_rendered_maps_read_by_the_decoder():
    rng = np.random.default_rng(1)
    scene = random_scene(rng, 1, image_size=(256, 160), height_px=(120, 150))
    kp = scene.kp2d.copy()
    t = render_targets(kp, scene.kp3d_rel_mm, in_size=(256, 160))
    kp_map = kp.copy()
    kp_map[..., :2] = to_map(kp[..., :2])
    det = kp_map[..., 2] > 0
    slow = stage2_inputs(t["enc3d"], kp_map)[0]
    fast = encodings_at_joints(scene.kp3d_rel_mm / 1000.0, det, rng, noise_m=0.0)[0]
    for j in range(14):
        if det[0, j]:
            np.testing.assert_allclose(fast[j, 3 * j:3 * j + 3], slow[j, 3 * j:3 * j + 3], atol=1e-5)
    np.testing.assert_allclose(fast[skeleton.NECK], slow[skeleton.NECK, :63], atol=1e-5)
    r_slow, v_slow = read_3d(t["enc3d"], kp_map)
    r_fast, v_fast = readout_at_joints(fast[None], det)
    assert (v_slow == v_fast).all()
    np.testing.assert_allclose(r_fast[v_fast] * 1000, r_slow[v_slow], atol=1e-2)


def test_a_short_training_run_completes_dropped_joints_better_than_the_read_out():
    torch.manual_seed(0)
    cfg = Stage2TrainConfig(joint_drop=0.3, limb_drop=0.8)
    rng = np.random.default_rng(0)
    net = Stage2Net(Stage2Config(width=256, depth=2))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    val = make_batch(np.random.default_rng(99), 512, cfg)
    before = evaluate_stage2(net, val)["val_mpjpe_mm"]
    for _ in range(150):
        f, r, v, y = (torch.from_numpy(a) for a in make_batch(rng, 128, cfg))
        net.train()
        loss = (net(f, r, v) - y).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate_stage2(net, val)["val_mpjpe_mm"]
    assert after < 0.75 * before, (before, after)


def test_a_2d_only_lifter_ignores_the_3d_encodings_and_the_read_out():
    torch.manual_seed(0)
    f, r, v, _ = (torch.from_numpy(a) for a in make_batch(np.random.default_rng(3), 16, Stage2TrainConfig(enc_drop=0.0)))
    lifter = Stage2Net(Stage2Config(width=64, depth=1, use_encodings=False)).eval()
    torch.nn.init.normal_(lifter.out.weight, std=0.1)
    scrambled = f.clone()
    scrambled[..., :63] = torch.randn_like(scrambled[..., :63])
    with torch.no_grad():
        a = lifter(f, r, v)
        b = lifter(scrambled, torch.randn_like(r), torch.ones_like(v))
        c = lifter(f.flip(0), r.flip(0), v.flip(0))  # other people's 2D: other poses
    torch.testing.assert_close(a, b)
    assert (a - c.flip(0)).abs().max() < 1e-5 and (a - c).abs().max() > 1e-3
    assert torch.allclose(a[:, skeleton.ROOT_3D], torch.zeros(16, 3))


def test_real_pairs_keep_2d_and_3d_facing_the_same_way_when_mirrored():
    """Annotated 2D with the teacher's 3D: whichever way a sampled person is mirrored, the right
    shoulder is on the same side of the left one in the image and in camera space."""
    from pathlib import Path
    from shared_data import require
    from xnect_app.train.stage2 import load_real_pairs

    data = require("lspet").parent
    pairs = load_real_pairs(str(data), str(Path(__file__).resolve().parents[1] / "data_cache"))
    assert pairs is not None and len(pairs) > 5000
    kp, k3 = pairs.sample(np.random.default_rng(0), 4000, (256, 160))
    rs2, ls2 = skeleton.JOINTS_2D.index("r_shoulder"), skeleton.JOINTS_2D.index("l_shoulder")
    rs3, ls3 = skeleton.JOINTS_3D.index("r_shoulder"), skeleton.JOINTS_3D.index("l_shoulder")
    d2, d3 = kp[:, rs2, 0] - kp[:, ls2, 0], k3[:, rs3, 0] - k3[:, ls3, 0]
    wide = (kp[:, rs2, 2] > 0) & (kp[:, ls2, 2] > 0) & (np.abs(d2) > 2.0)  # 2+ cells apart
    assert wide.sum() > 1000
    assert np.mean(np.sign(d2[wide]) == np.sign(d3[wide])) > 0.95
    # as large as the synthetic people make_batch puts in the same image (both in its pixels)
    from xnect_app.pose.synthetic import place_people, random_people
    from xnect_app.types import Intrinsics

    rng, n, (w, h) = np.random.default_rng(1), 2000, (256, 160)
    scene = place_people(random_people(rng, n), np.stack([rng.uniform(0.2 * w, 0.8 * w, n), np.full(n, h / 2)], 1),
                         rng.uniform(2500, 12000, n), Intrinsics.from_fov(w, h, 60.0), (w, h))

    def median_extent(k):
        xy = np.where(k[..., 2:3] > 0, k[..., :2], np.nan)
        return np.median(np.nanmax(np.nanmax(xy, 1) - np.nanmin(xy, 1), 1))

    assert 0.8 < median_extent(kp) / median_extent(scene.kp2d) < 1.25


def _random_member(seed: int, **cfg) -> Stage2Net:
    torch.manual_seed(seed)
    net = Stage2Net(Stage2Config(width=64, depth=1, **cfg)).eval()
    torch.nn.init.normal_(net.out.weight, std=0.1)
    return net


def test_an_ensemble_returns_the_mean_of_its_members_poses():
    from xnect_app.nn.stage2 import Stage2Ensemble, Stage2EnsembleConfig, build_stage2

    a, b = _random_member(1, use_encodings=False), _random_member(2)
    ens = build_stage2(Stage2EnsembleConfig((a.cfg, b.cfg)).to_dict()).eval()
    assert isinstance(ens, Stage2Ensemble) and ens.cfg.enc_chs == a.cfg.enc_chs
    ens.load_state_dict({**{f"members.0.{k}": v for k, v in a.state_dict().items()},
                         **{f"members.1.{k}": v for k, v in b.state_dict().items()}})
    f, r, v, _ = (torch.from_numpy(x) for x in make_batch(np.random.default_rng(5), 8, Stage2TrainConfig(enc_drop=0.0)))
    with torch.no_grad():
        want = (a(f, r, v) + b(f, r, v)) / 2
        got = ens(f, r, v)
    torch.testing.assert_close(got, want)
    assert (a(f, r, v) - b(f, r, v)).abs().max() > 1e-3  # the members differ, so the mean is a real blend
    assert torch.allclose(got[:, skeleton.ROOT_3D], torch.zeros(len(f), 3))
    assert isinstance(build_stage2(a.cfg.to_dict()), Stage2Net)


def test_members_with_other_inputs_are_refused():
    import pytest
    from xnect_app.nn.stage2 import Stage2EnsembleConfig

    with pytest.raises(ValueError, match="differ"):
        Stage2EnsembleConfig((Stage2Config(), Stage2Config(enc_chs=30)))
