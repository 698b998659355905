"""PoseEstimator: letterboxing, coordinate mapping, the whole decode chain, weights files, precision."""

import cv2
import numpy as np
import pytest
import torch

from xnect_app import skeleton
from xnect_app.estimator import DecodeConfig, ModelConfig, PoseEstimator, TrackConfig
from xnect_app.nn.stage1 import Stage1Config, Stage1Net, Stage1Output
from xnect_app.pose.synthetic import random_scene
from xnect_app.pose.targets import render_targets
from xnect_app.runtime import precision as precision_module
from xnect_app.runtime.precision import cpu_has_bf16, resolve_precision
from xnect_app.runtime.preprocess import letterbox
from xnect_app.train.release import export_weights
from xnect_app.types import Intrinsics

UNTRACKED = TrackConfig(tracking=False)


def random_model(**kw) -> ModelConfig:
    """A small untrained network (tests of the plumbing)."""
    return ModelConfig(random_init=True, backbone="selecsls42b", **{"input_size": (128, 96), **kw})

from shared_data import DATA, needs_data

COCO_DEV = DATA / "coco_dev"


@pytest.mark.parametrize("shape", [(576, 768), (1920, 1080), (320, 512), (100, 40)])
def test_letterbox_maps_network_pixels_back_to_the_frame(shape):
    frame = np.zeros(shape + (3,), np.uint8)
    h, w = shape
    frame[h // 3, w // 4] = 255  # one bright pixel
    img, lb = letterbox(frame, (512, 320))
    assert img.shape == (320, 512, 3)
    ys, xs = np.nonzero(img.max(2) > 150)  # padding is grey (114)
    if len(xs):  # the pixel survives unless the frame is shrunk a lot
        back = lb.to_frame(np.array([[xs.mean(), ys.mean()]]))[0]
        assert abs(back[0] - w // 4) <= max(1.0, 1 / lb.scale) and abs(back[1] - h // 3) <= max(1.0, 1 / lb.scale)


class _PerfectStage1(torch.nn.Module):
    """Stands in for a perfectly trained network: emits the rendered targets of a known scene."""

    def __init__(self, kp2d_net, kp3d_mm):
        super().__init__()
        self.cfg = Stage1Config(backbone="selecsls42b")
        self.kp2d_net, self.kp3d_mm = kp2d_net, kp3d_mm

    def forward(self, x):
        h, w = x.shape[-2:]
        t = render_targets(self.kp2d_net, self.kp3d_mm, in_size=(w, h))
        return Stage1Output(*(torch.from_numpy(t[k])[None] for k in ("heatmaps", "pafs", "enc3d")))


def test_the_decode_chain_recovers_people_in_frame_pixels_and_camera_millimetres():
    frame_w, frame_h = 1024, 640  # twice the network size: letterbox scale 0.5
    intr = Intrinsics.from_fov(frame_w, frame_h, 60.0)
    scene = random_scene(np.random.default_rng(3), 3, image_size=(frame_w, frame_h), intrinsics=intr,
                         height_px=(250, 450))
    kp_net = scene.kp2d.copy()
    kp_net[..., :2] = (kp_net[..., :2] + 0.5) * 0.5 - 0.5
    est = PoseEstimator.from_networks(_PerfectStage1(kp_net, scene.kp3d_rel_mm), None, decode=DecodeConfig(fov=60.0),
                                      track=UNTRACKED)
    res = est(np.zeros((frame_h, frame_w, 3), np.uint8))
    assert res.image_size == (frame_w, frame_h) and len(res.people) == 3
    for p in res.people:
        d = np.nanmean(np.linalg.norm(p.kp2d[:14, None, :2] - scene.kp2d[:, :14, :2].transpose(1, 0, 2), axis=-1), 0)
        k = int(np.argmin(d))
        assert d[k] < 3.0  # frame pixels (1.5 px at the network's scale)
        assert np.nanmax(np.abs(p.kp3d_rel_mm[:14] - scene.kp3d_rel_mm[k, :14])) < 10.0
        root_err = np.linalg.norm(p.root_cam_mm - scene.kp3d_cam_mm[k, skeleton.ROOT_3D])
        assert root_err < 0.03 * scene.kp3d_cam_mm[k, skeleton.ROOT_3D, 2]


def test_random_init_runs_on_a_real_sized_frame_and_reports_timings():
    est = PoseEstimator(random_model(input_size=(256, 160)), track=UNTRACKED)
    res = est(np.random.default_rng(0).integers(0, 255, (576, 768, 3), dtype=np.uint8))
    assert res.image_size == (768, 576)
    assert {"preprocess", "stage1", "decode"} <= set(res.timings_ms)
    assert res.to_dict()["type"] == "frame"


def test_missing_default_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="random_init"):
        PoseEstimator(ModelConfig(weights=tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable xnect weights file"):
        PoseEstimator(ModelConfig(weights=bad))
    with pytest.raises(ValueError, match="multiples of 16"):
        ModelConfig(random_init=True, input_size=(500, 300))
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        PoseEstimator(ModelConfig(checkpoint=tmp_path / "last.pt"))
    with pytest.raises(ValueError, match="exclude each other"):
        PoseEstimator(ModelConfig(weights=bad, random_init=True))


def test_exported_weights_load_into_the_estimator_and_give_the_same_maps(tmp_path):
    torch.manual_seed(0)
    net = Stage1Net(Stage1Config(backbone="selecsls42b")).eval()
    ck = tmp_path / "last.pt"
    torch.save({"model": net.state_dict(), "stage1_config": net.cfg.to_dict(), "step": 7}, ck)
    out = tmp_path / "w.pt"
    export_weights(str(ck), None, str(out), half=False)
    est = PoseEstimator(ModelConfig(weights=out, input_size=(128, 128), precision="fp32"), track=UNTRACKED)
    x = torch.rand(1, 3, 128, 128) * 255
    with torch.no_grad():
        a, b = net(x), est.stage1(x)
    assert torch.allclose(a.heatmaps, b.heatmaps) and torch.allclose(a.enc3d, b.enc3d)
    assert est.model_name == "w"
    from_checkpoint = PoseEstimator(ModelConfig(checkpoint=ck, input_size=(128, 128), precision="fp32"),
                                    track=UNTRACKED)
    with torch.no_grad():
        c = from_checkpoint.stage1(x)
    assert torch.allclose(a.heatmaps, c.heatmaps) and from_checkpoint.model_name == f"{tmp_path.name}@7"


def test_networks_run_on_one_thread_whichever_thread_calls():
    """A pipeline builds the estimator in the main thread and runs it in another; torch work must
    stay on one thread (two OpenMP pools on 2 cores made DynConv Stage I 2x slower)."""
    import threading

    est = PoseEstimator(random_model(), track=UNTRACKED)
    ran_on = []
    est.stage1.register_forward_hook(lambda *_: ran_on.append(threading.get_ident()))
    frame = np.full((96, 128, 3), 90, np.uint8)
    est(frame)
    worker = threading.Thread(target=est, args=(frame,))
    worker.start()
    worker.join()
    assert len(ran_on) == 2 and ran_on[0] == ran_on[1]
    assert ran_on[0] not in (threading.get_ident(), worker.ident)
    with pytest.raises(ValueError, match="uint8 BGR"):  # errors reach the caller
        est(frame.astype(np.float32))

    inline = PoseEstimator(random_model(torch_thread=False), track=UNTRACKED)
    inline.stage1.register_forward_hook(lambda *_: ran_on.append(threading.get_ident()))
    inline(frame)
    assert ran_on[-1] == threading.get_ident()


def test_bf16_is_detected_from_the_cpu_flags():
    assert cpu_has_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_bf16("flags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert not cpu_has_bf16("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not cpu_has_bf16("Features\t: fp asimd\n")


def test_precision_auto_follows_the_cpu_and_bf16_needs_the_torch_backend_on_the_cpu(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", "torch", cpu) == "bf16"
    assert resolve_precision("auto", "onnxruntime", cpu) == "fp32"
    assert resolve_precision("auto", "torch", cuda) == "fp32"
    assert resolve_precision("fp32", "torch", cpu) == "fp32"
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", "torch", cpu) == "fp32"
    assert resolve_precision("bf16", "torch", cpu) == "bf16"  # asked for: emulated, slower, still works
    with pytest.raises(ValueError, match="torch backend on the CPU"):
        resolve_precision("bf16", "onnxruntime", cpu)
    with pytest.raises(ValueError, match="precision 'fp16'"):
        random_model(precision="fp16")
    est = PoseEstimator(random_model(), track=UNTRACKED)
    assert est.precision == "fp32" and est.settings()["precision"] == "fp32" and not est.stage1.bf16_inference


@needs_data("coco_dev")
def test_bf16_inference_finds_the_people_fp32_finds_on_real_photos():
    fp32, bf16 = (PoseEstimator(ModelConfig(precision=p, torch_thread=False), track=UNTRACKED)
                  for p in ("fp32", "bf16"))
    assert bf16.settings()["precision"] == "bf16"
    checked = 0
    for path in sorted((COCO_DEV / "images").glob("*.jpg"))[:4]:
        img = cv2.imread(str(path))
        inp = letterbox(img, fp32.input_size)[0]
        with torch.inference_mode():
            maps = [est.runner([inp]).heatmaps for est in (fp32, bf16)]
        assert maps[1].dtype == np.float32 and not np.array_equal(maps[0], maps[1])  # really bfloat16
        assert np.abs(maps[1] - maps[0]).max() < 0.15 * np.abs(maps[0]).max()
        a, b = fp32(img).people, bf16(img).people
        for p in a:
            if p.score < 0.4:
                continue
            vis = p.kp2d[:, 2] > 0
            size = np.ptp(p.kp2d[vis, :2], axis=0).max()
            d = [np.nanmean(np.linalg.norm(q.kp2d[vis, :2] - p.kp2d[vis, :2], axis=-1)) for q in b]
            assert d and min(d) < 0.05 * size, (path.name, p.score, d)
            checked += 1
    assert checked >= 3


def test_the_first_releases_keywords_still_work_with_a_deprecation_warning(tmp_path):
    frame = np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    new = PoseEstimator(random_model(seed=3), DecodeConfig(min_score=0.3), UNTRACKED)
    with pytest.warns(DeprecationWarning, match="ModelConfig"):
        old = PoseEstimator(random_init=True, backbone="selecsls42b", input_size=(128, 96), seed=3, min_score=0.3,
                            tracking=False)
    assert old.settings() == new.settings() and not old.tracking
    a, b = new.detect_batch([frame])[0], old.detect_batch([frame])[0]
    assert [p.to_dict((128, 96)) for p in a.people] == [p.to_dict((128, 96)) for p in b.people]
    with pytest.warns(DeprecationWarning, match="ModelConfig"):
        trained = PoseEstimator.from_networks(new.stage1, None, tracking=False, fit_skeleton=False, dynconv=False)
    assert trained.model_name == "selecsls42b (in training)" and not trained.model.torch_thread
    with pytest.warns(DeprecationWarning, match="runtime.preprocess"):
        from xnect_app.estimator import letterbox as old_letterbox
    assert old_letterbox is letterbox
    with pytest.raises(TypeError, match="flip_tset"), pytest.warns(DeprecationWarning):
        PoseEstimator(random_init=True, flip_tset=True)


@pytest.mark.parametrize("tool", ["process", "demo", "server"])
def test_the_tracking_options_reach_the_trackers_of_every_stream(tool):
    """--track-* of xnect-process / -demo / -server set the estimator's tracker and the server's
    per-client trackers alike."""
    import importlib

    from xnect_app.options import tracker_config
    from xnect_app.server.app import default_tracker_factory

    parser = importlib.import_module(f"xnect_app.cli.{tool}").build_parser()
    where = {"process": ["x.mp4", "--out-dir", "o"], "demo": ["--video", "x.mp4"], "server": []}[tool]
    args = parser.parse_args(where
                             + ["--track-confirm", "1", "--track-no-colour", "--track-max-lost", "3"])
    cfg = tracker_config(args)
    assert (cfg.confirm_frames, cfg.use_colour, cfg.max_lost_s) == (1, False, 3.0)
    est = PoseEstimator(random_model(), track=TrackConfig(tracker=cfg))
    assert est.new_stream().tracker.cfg == cfg and default_tracker_factory(est)().cfg == cfg
    with pytest.raises(SystemExit):
        parser.parse_args([*where, "--track-max-lost", "-1"])
