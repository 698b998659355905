"""DynConv end to end: mask training in the trainer, weights with a mask unit, and --dynconv at inference."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from xnect_app.estimator import DecodeConfig, ModelConfig, PoseEstimator, TrackConfig
from xnect_app.io.draw import Overlay
from xnect_app.nn.stage1 import Stage1Config, Stage1Net
from xnect_app.runtime.motion import MotionGate
from xnect_app.train.release import export_weights
from xnect_app.train.trainer import TrainConfig, Trainer

from shared_data import DATA, REPO, needs_data

VIDEO = DATA / "videos"

UNTRACKED = TrackConfig(tracking=False)
LOW = DecodeConfig(threshold=0.02)  # barely trained heads: low peaks
pytestmark = needs_data("lspet")


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    """The trainer sets torch's thread count (threads=1 below); later test modules expect the default."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dense_weights(tmp_path_factory) -> Path:
    """A dense Stage I weights file, as `xnect-train export` writes it."""
    folder = tmp_path_factory.mktemp("dense")
    torch.manual_seed(0)
    net = Stage1Net(Stage1Config(backbone="selecsls42b"))
    torch.save({"model": net.state_dict(), "step": 7, "history": [], "stage1_config": net.cfg.to_dict()},
               folder / "last.pt")
    export_weights(str(folder / "last.pt"), None, str(folder / "dense.pt"), half=False)
    return folder / "dense.pt"


def _config(out: Path, init: Path | None, steps: int) -> TrainConfig:
    return TrainConfig(out_dir=str(out), backbone="selecsls42b", size=(128, 128), batch_size=2, epoch_steps=2,
                       max_steps=steps, data_root=str(DATA), dev_set=None, workers=0, threads=1,
                       init_weights=str(init) if init else None, dynconv=True, dynconv_budget=0.3,
                       teacher_cache=str(REPO / "data_cache"))


@pytest.fixture(scope="module")
def dynconv_run(tmp_path_factory, dense_weights) -> Path:
    """Fine-tune the dense weights with --dynconv for a few steps, stop, and resume."""
    out = tmp_path_factory.mktemp("dyn")
    Trainer(_config(out, dense_weights, steps=9)).run()
    Trainer(_config(out, dense_weights, steps=11)).run()  # resumes from out/last.pt, not --init
    return out


def test_dynconv_training_starts_from_dense_weights_and_logs_the_cost_share(dynconv_run, dense_weights):
    ck = torch.load(dynconv_run / "last.pt", map_location="cpu", weights_only=False)
    assert ck["step"] == 11 and ck["dynconv_start"] == 7  # the schedule counts from the dense step
    assert ck["stage1_config"]["dynconv"] is True
    assert {"mask_unit.conv.weight", "mask_unit.conv.bias", "mask_unit.fc.weight"} <= set(ck["model"])
    dense = torch.load(dense_weights, weights_only=True)["stage1"]
    moved = [k for k, v in dense.items() if v.is_floating_point() and not torch.equal(v, ck["model"][k])]
    assert moved, "the pose network did not train"
    groups = {g["name"]: g["lr"] for g in ck["optimizer"]["param_groups"]}
    assert groups["mask_unit"] == pytest.approx(groups["net"] * 1e-2 / 5e-4)  # the mask unit's own rate
    epochs = [json.loads(line) for line in (dynconv_run / "log.jsonl").read_text().splitlines()]
    assert epochs[-1]["step"] == 11
    for e in epochs:
        assert 0.0 <= e["active"] <= 1.0 and e["sparsity"] >= 0.0


def test_a_dynconv_checkpoint_does_not_resume_into_a_dense_run(dynconv_run, tmp_path):
    cfg = _config(dynconv_run, None, steps=12)
    cfg.dynconv = False
    with pytest.raises(RuntimeError, match="DynConv"):
        Trainer(cfg)


@pytest.fixture(scope="module")
def dynconv_weights(dynconv_run) -> Path:
    path = dynconv_run / "dyn.pt"
    export_weights(str(dynconv_run / "last.pt"), None, str(path), half=False)
    return path


def _frames(n: int = 2) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(next(iter(sorted(VIDEO.glob("*.mp4"))))))
    frames = [cap.read()[1] for _ in range(n)]
    cap.release()
    return frames


def _force_mask(est: PoseEstimator, share_left: float) -> None:
    """Make the (barely trained) mask unit active on the left `share_left` of the frame."""
    unit = est.stage1.mask_unit
    with torch.no_grad():
        unit.conv.weight.zero_()
        unit.fc.weight.zero_()
        unit.conv.bias.fill_(-1.0)
    cols = est.input_size[0] // 8
    border = int(round(cols * share_left))

    def hook(_module, _inp, out):
        out = torch.full_like(out, -1.0)
        out[..., :border] = 1.0
        return out
    unit.register_forward_hook(hook)


def test_sparse_inference_with_learned_masks_matches_masked_dense(dynconv_weights):
    frames = _frames()
    masked = PoseEstimator(ModelConfig(weights=dynconv_weights), LOW, UNTRACKED)
    masked.stage1.set_sparse(False, mask_unit=True)  # masked-dense: the mask unit's mask, zero fill, every cell computed
    sparse = PoseEstimator(ModelConfig(weights=dynconv_weights, dynconv=True), LOW, UNTRACKED)
    for est in (masked, sparse):
        _force_mask(est, 0.5)
    a, b = masked.detect_batch(frames), sparse.detect_batch(frames)
    stats = sparse.stage1.sparse_stats
    assert stats is not None and stats.sparse and 0.4 < stats.active < 0.6
    for ra, rb, f in zip(a, b, frames):
        assert len(ra.people) == len(rb.people)
        for pa, pb in zip(ra.people, rb.people):
            np.testing.assert_allclose(np.nan_to_num(pa.kp2d), np.nan_to_num(pb.kp2d), atol=1e-3)
        # The mask in frame pixels: the computed half of the network input, mapped through the letterbox.
        assert rb.dynconv_mask.shape == f.shape[:2]
        assert rb.dynconv_mask[:, :5].all() and not rb.dynconv_mask[:, -5:].any()


def test_weights_with_a_mask_unit_run_dense_without_dynconv(dynconv_weights):
    """Bundled weights may carry a mask unit; without --dynconv every cell is computed."""
    frames = _frames()
    est = PoseEstimator(ModelConfig(weights=dynconv_weights), LOW, UNTRACKED)
    _force_mask(est, 0.5)  # a mask that would drop the right half
    plain = Stage1Net(Stage1Config.from_dict({**est.stage1.cfg.to_dict(), "dynconv": False}))
    plain.load_state_dict({k: v for k, v in est.stage1.state_dict().items() if not k.startswith("mask_unit.")})
    ref = PoseEstimator.from_networks(plain, est.stage2, decode=LOW, track=UNTRACKED)
    for ra, rb in zip(est.detect_batch(frames), ref.detect_batch(frames)):
        assert ra.dynconv_mask is None and ra.computed_share is None
        assert len(ra.people) == len(rb.people)
        for pa, pb in zip(ra.people, rb.people):
            np.testing.assert_allclose(np.nan_to_num(pa.kp2d), np.nan_to_num(pb.kp2d), atol=1e-3)


def test_frozen_mask_training_moves_only_the_mask_unit(tmp_path, dense_weights):
    cfg = _config(tmp_path, dense_weights, steps=10)
    cfg.dynconv_freeze = True
    Trainer(cfg).run()
    trained = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)["model"]
    dense = torch.load(dense_weights, weights_only=True)["stage1"]
    assert all(torch.equal(v.float(), trained[k].float()) for k, v in dense.items())  # weights and BN statistics
    assert float(trained["mask_unit.conv.bias"]) != 3.0  # the unit's initial bias: it trained

    # export: the dense run's Stage I plus this mask unit; the dense path stays the same network
    merged = tmp_path / "merged.pt"
    export_weights(str(dense_weights.parent / "last.pt"), None, str(merged), half=False,
                   mask_unit_ckpt=str(tmp_path / "last.pt"))
    doc = torch.load(merged, weights_only=True)
    assert doc["stage1_config"]["dynconv"] and doc["meta"]["mask_unit"]["frozen_network"]
    assert doc["meta"]["stage1_step"] == 7 and doc["meta"]["mask_unit"]["steps"] == 3
    assert all(torch.equal(v, doc["stage1"][k]) for k, v in dense.items())
    # the same from the weights file itself (what a lent GPU sends back), keeping its step
    export_weights(str(dense_weights), None, str(tmp_path / "from_file.pt"), half=False,
                   mask_unit_ckpt=str(tmp_path / "last.pt"))
    again = torch.load(tmp_path / "from_file.pt", weights_only=True)
    assert again["meta"]["stage1_step"] == 7 and again["stage1_config"] == doc["stage1_config"]
    assert all(torch.equal(v, again["stage1"][k]) for k, v in doc["stage1"].items())
    # a dense run initialised from these weights leaves the mask unit out instead of failing
    cfg = _config(tmp_path / "dense_again", merged, steps=8)
    cfg.dynconv = False
    assert not Trainer(cfg).net.cfg.dynconv


def test_export_refuses_a_mask_unit_fitted_to_another_network(dynconv_run, dense_weights, tmp_path):
    # dynconv_run fine-tuned the whole network, so its mask unit belongs to other weights
    with pytest.raises(ValueError, match="differs"):
        export_weights(str(dense_weights.parent / "last.pt"), None, str(tmp_path / "x.pt"),
                       mask_unit_ckpt=str(dynconv_run / "last.pt"))
    with pytest.raises(ValueError, match="no DynConv mask unit"):
        export_weights(str(dense_weights.parent / "last.pt"), None, str(tmp_path / "x.pt"),
                       mask_unit_ckpt=str(dense_weights.parent / "last.pt"))


def test_a_budget_caps_the_computed_share(dynconv_weights):
    est = PoseEstimator(ModelConfig(weights=dynconv_weights, dynconv=True, dynconv_budget=0.1), track=UNTRACKED)
    _force_mask(est, 0.5)
    est.detect_batch(_frames(1))
    assert est.stage1.sparse_stats.active <= 0.1 + 1e-6


def test_the_overlay_darkens_skipped_cells_and_reports_the_computed_share(dynconv_weights):
    est = PoseEstimator(ModelConfig(weights=dynconv_weights, dynconv=True), track=UNTRACKED)
    _force_mask(est, 0.5)
    frame = np.full((240, 320, 3), 200, np.uint8)
    res = est.detect_batch([frame])[0]
    drawn = Overlay(view_3d=False, show_mask=True)(frame, res)
    assert drawn[120, 300].max() < 100 and drawn[200, 40].min() == 200  # right skipped, left kept


def test_dynconv_needs_weights_with_a_mask_unit(dense_weights):
    with pytest.raises(ValueError, match="no DynConv mask unit"):
        PoseEstimator(ModelConfig(weights=dense_weights, dynconv=True))
    with pytest.raises(ValueError, match="needs DynConv"):
        PoseEstimator(ModelConfig(weights=dense_weights, dynconv_budget=0.5))
    with pytest.raises(ValueError, match="no DynConv mask unit"):  # images: motion masks cannot run
        PoseEstimator(ModelConfig(weights=dense_weights, dynconv="auto"), track=UNTRACKED)


def test_auto_masks_use_the_mask_unit_if_there_is_one_else_motion(dense_weights, dynconv_weights):
    assert PoseEstimator(ModelConfig(weights=dynconv_weights, dynconv="auto"), track=UNTRACKED).dynconv == "learned"
    est = PoseEstimator(ModelConfig(weights=dense_weights, dynconv="auto"))
    assert est.dynconv == "motion" and isinstance(est.runner.gate, MotionGate)
    with pytest.raises(ValueError, match="no DynConv mask unit, and a budget"):
        PoseEstimator(ModelConfig(weights=dense_weights, dynconv="auto", dynconv_budget=0.5))


@pytest.mark.parametrize("prog,extra", [("demo", ["--video", "x.mp4", "--headless"]),
                                        ("process", ["x.mp4", "--out-dir", "o"]),
                                        ("server", [])])
def test_clis_refuse_dynconv_with_dense_weights_in_one_line(prog, extra, dense_weights, tmp_path):
    video = next(iter(sorted(VIDEO.glob("*.mp4"))))
    args = [str(video) if a == "x.mp4" else str(tmp_path / "o") if a == "o" else a for a in extra]
    r = subprocess.run([sys.executable, "-m", f"xnect_app.cli.{prog}", *args, "--weights", str(dense_weights),
                        "--dynconv", "--dynconv-mask", "learned"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no DynConv mask unit" in lines[0], r.stderr


def test_eval_refuses_dynconv_with_dense_weights_in_one_line(dense_weights):
    r = subprocess.run([sys.executable, "-m", "xnect_app.cli.eval", "coco", str(DATA / "coco_dev"), "--weights",
                        str(dense_weights), "--dynconv"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1  # the weights lack what the options need: an input failure
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no DynConv mask unit" in lines[0], r.stderr


@pytest.mark.skipif(not (REPO / "models" / "xnect_selecsls60.pt").is_file(), reason="bundled weights missing")
def test_bundled_mask_unit_keeps_people_on_coco_dev_at_half_the_cells():
    """The bundled weights' mask unit, on real ground truth: the sparse path computes about half
    of the cells and loses little AP against the dense path (measured 0.161 vs 0.166, PCK 0.535 vs 0.554,
    53% of the cells)."""
    runs = {}
    for extra in ([], ["--dynconv"]):
        r = subprocess.run([sys.executable, "-m", "xnect_app.cli.eval", "coco", str(DATA / "coco_dev"), "--json",
                            *extra], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        runs[bool(extra)] = json.loads(r.stdout)
    dense, sparse = runs[False], runs[True]
    assert "computed_share" not in dense and 0.2 < sparse["computed_share"] < 0.7
    assert sparse["ap_body"] > dense["ap_body"] - 0.02 and sparse["pck_body@0.2"] > dense["pck_body@0.2"] - 0.05


# --------------------------------------------------------------------------- motion masks

def _moving_square_frames(n: int = 30, size=(320, 192)) -> list[np.ndarray]:
    w, h = size
    rng = np.random.default_rng(0)
    background = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
    background = cv2.GaussianBlur(background, (9, 9), 0)
    frames = []
    for i in range(n):
        f = background.copy()
        x = 20 + 6 * i
        cv2.rectangle(f, (x, 60), (x + 40, 140), (20, 20, 240), -1)
        frames.append(f)
    return frames


def test_motion_gate_marks_the_moving_thing_after_warm_up():
    gate = MotionGate(warmup=10)
    frames = _moving_square_frames(25)
    masks = [gate.update(f) for f in frames]
    assert all(m is None for m in masks[:10])
    last = masks[-1]
    assert last.shape == (24, 40)
    x = 20 + 6 * 24
    assert last[60 // 8:140 // 8, x // 8:(x + 40) // 8].all()  # the square's cells
    assert last.mean() < 0.3 and last[:, :2].sum() == 0          # the still background is skipped
    assert gate.background_due()
    bg = gate.background()
    assert bg.shape == (192, 320, 3) and not gate.background_due()


def test_motion_gate_backgrounds_computed_off_thread_arrive_a_fixed_number_of_frames_later():
    """The background median runs in a worker thread and is taken `lag` frames after the update
    that started it: the same masks as computing it on the spot, only later, whatever the timing."""
    frames = _moving_square_frames(40)
    on_the_spot, threaded = MotionGate(warmup=10, lag=0), MotionGate(warmup=10, lag=3)
    assert threaded.first_mask_frame == 13
    now = [on_the_spot.update(f) for f in frames]
    later = [threaded.update(f) for f in frames]
    assert now[9] is None and now[10] is not None
    assert all(m is None for m in later[:13]) and later[13] is not None
    refreshed = 20  # the second update (doubling intervals: after frames 10 and 20)
    for i in [*range(13, refreshed), *range(refreshed + 3, 40)]:
        assert torch.equal(now[i], later[i]), i
    assert any(not torch.equal(now[i], later[i]) for i in range(refreshed, refreshed + 3))


def test_motion_masked_estimator_runs_dense_then_sparse_on_a_video_stream():
    frames = _moving_square_frames(34)
    torch.manual_seed(0)
    est = PoseEstimator(ModelConfig(random_init=True, backbone="selecsls42b", input_size=(320, 192), dynconv="motion"),
                        track=TrackConfig(fit_skeleton=False))
    shares = []
    for f in frames:
        res = est(f)
        assert res.dynconv_mask is not None and res.dynconv_mask.shape == f.shape[:2]
        shares.append(res.dynconv_mask.mean())
    assert shares[0] == 1.0                   # warm-up: everything computed
    assert shares[-1] < 0.5                   # then only around the moving square
    stats = est.stage1.sparse_stats
    assert stats is not None and stats.sparse
    assert est.stage1.first_masked_block == 0  # motion masks need no features: all blocks sparse
    est.reset()                               # a new stream warms up again
    assert est(frames[0]).dynconv_mask.mean() == 1.0


def test_motion_masks_follow_each_stream_of_a_shared_batch():
    """A server batches frames of several static cameras: each stream keeps its own motion gate and
    background, so a stream's results do not change when others share its batches."""
    frames_a = _moving_square_frames(34)
    frames_b = [np.ascontiguousarray(f[::-1, ::-1]) for f in frames_a]  # another scene, other motion
    torch.manual_seed(0)
    est = PoseEstimator(ModelConfig(random_init=True, backbone="selecsls42b", input_size=(320, 192), dynconv="motion"),
                        track=TrackConfig(fit_skeleton=False))
    maps = []
    est.stage1.register_forward_hook(lambda mod, inp, out: maps.append(out.heatmaps.clone()))
    alone = [est.detect_batch([f], streams=["a"])[0] for f in frames_a]
    maps_alone, maps[:] = list(maps), []
    est.forget_stream("a")
    mixed = [est.detect_batch([fa, fb], streams=["a", "b"]) for fa, fb in zip(frames_a, frames_b)]
    assert alone[0].computed_share == 1.0 and mixed[0][1].computed_share == 1.0  # warm-up: dense
    assert alone[-1].computed_share < 0.5 and mixed[-1][1].computed_share < 0.5  # then sparse
    assert est.stage1.sparse_stats.sparse
    for i, (solo, (ra, rb)) in enumerate(zip(alone, mixed)):
        assert np.array_equal(solo.dynconv_mask, ra.dynconv_mask)
        torch.testing.assert_close(maps[2 * i], maps_alone[i], rtol=1e-5, atol=1e-6)
    xa, xb = 20 + 6 * 33, 320 - (20 + 6 * 33) - 40   # where each square is in the last frame
    last_a, last_b = mixed[-1][0].dynconv_mask, mixed[-1][1].dynconv_mask
    assert last_a[60:140, xa:xa + 40].all() and last_b[192 - 140:192 - 60, xb:xb + 40].all()
    assert not np.array_equal(last_a, last_b)
    est.forget_stream("b")                    # a client that left: its next frame warms up again
    assert est.detect_batch([frames_b[0]], streams=["b"])[0].computed_share == 1.0
    with pytest.raises(ValueError, match="streams"):
        est.detect_batch(frames_a[:2], streams=["a"])


def test_motion_masks_need_a_stream_and_no_budget():
    with pytest.raises(ValueError, match="stream"):
        PoseEstimator(ModelConfig(random_init=True, backbone="selecsls42b", dynconv="motion"), track=UNTRACKED)
    with pytest.raises(ValueError, match="learned masks"):
        PoseEstimator(ModelConfig(random_init=True, backbone="selecsls42b", dynconv="motion", dynconv_budget=0.3))


def test_person_cells_cover_each_labelled_box_and_ignore_unlabelled_people():
    from xnect_app.train.trainer import person_cells
    kp = np.zeros((2, 19, 3), np.float32)
    kp[0, :2] = [[40, 40, 2], [80, 120, 2]]  # a person from (40, 40) to (80, 120)
    kp[1, 0] = [200, 200, 2]                  # one joint: no box
    ignore = np.zeros((256, 256), np.uint8)
    ignore[200:, 200:] = 1
    cells, weight = person_cells(kp, ignore, (32, 32), 8, grow=0.15)
    ys, xs = np.nonzero(cells)
    # grown by 0.15 * 80 = 12 px: x 28..92 -> cells 3..11, y 28..132 -> cells 3..16
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (3, 11, 3, 16)
    assert cells.sum() == 9 * 14
    assert weight[30, 30] == 0 and weight[10, 10] == 1
