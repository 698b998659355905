"""--precision int8: Stage I's core in int8 with activation ranges kept beside the weights file."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from shared_data import DATA, needs_data
from xnect_app.estimator import PoseEstimator, TrackConfig
from xnect_app.runtime.config import ModelConfig
from xnect_app.runtime.int8 import ranges_path
from xnect_app.weights import default_weights_path

UNTRACKED = TrackConfig(tracking=False, fit_skeleton=False)


def _frames(n: int = 3) -> list[np.ndarray]:
    import cv2
    cap = cv2.VideoCapture(str(DATA / "videos" / "two_people_courtyard.mp4"))
    frames = []
    while len(frames) < n:
        ok, img = cap.read()
        assert ok
        frames.append(img)
    cap.release()
    return frames


@pytest.fixture(scope="module")
def estimators():
    return (PoseEstimator(ModelConfig(precision="int8", torch_thread=False), track=UNTRACKED),
            PoseEstimator(ModelConfig(precision="fp32", torch_thread=False), track=UNTRACKED))


def test_the_bundled_weights_come_with_their_ranges():
    assert ranges_path(default_weights_path()).is_file()


@needs_data("videos/two_people_courtyard.mp4")
def test_int8_finds_the_people_fp32_finds_at_nearly_the_same_joints(estimators):
    int8, fp32 = estimators
    assert int8.precision == "int8"
    for frame in _frames():
        a, b = int8(frame).people, fp32(frame).people
        assert len(a) == len(b) == 2
        for p in a:
            q = min(b, key=lambda q: np.nanmean(np.abs(q.kp2d[:, :2] - p.kp2d[:, :2])))
            both = (p.kp2d[:, 2] > 0) & (q.kp2d[:, 2] > 0)
            height = np.ptp(q.kp2d[both, 1])
            assert np.median(np.linalg.norm(p.kp2d[both, :2] - q.kp2d[both, :2], axis=1)) < 0.05 * height


@needs_data("coco_train_extra", "videos/two_people_courtyard.mp4")
def test_export_int8_writes_ranges_beside_other_weights(tmp_path, capsys):
    from xnect_app.cli.export import main
    weights = tmp_path / "mine.pt"
    shutil.copy(default_weights_path(), weights)
    with pytest.raises(FileNotFoundError, match="xnect-export int8"):
        PoseEstimator(ModelConfig(weights=str(weights), precision="int8", torch_thread=False), track=UNTRACKED)
    assert main(["int8", "--weights", str(weights), "--images", str(DATA / "coco_train_extra"), "--count", "4"]) == 0
    assert f"wrote {tmp_path / 'mine.int8.json'}" in capsys.readouterr().out
    est = PoseEstimator(ModelConfig(weights=str(weights), precision="int8", torch_thread=False), track=UNTRACKED)
    assert len(est(_frames(1)[0]).people) == 2
    with open(weights, "ab") as f:                  # other weights now: their ranges are stale
        f.write(b"\0")
    with pytest.raises(ValueError, match="ranges of other weights"):
        PoseEstimator(ModelConfig(weights=str(weights), precision="int8", torch_thread=False), track=UNTRACKED)


def test_ranges_of_another_network_or_a_broken_file_are_refused(tmp_path):
    from xnect_app.runtime.int8 import Int8Stage1, load_ranges
    from xnect_app.weights import load_networks
    ranges = json.loads(ranges_path(default_weights_path()).read_text())
    small = load_networks(random_init=True, backbone="selecsls42b", seed=0).stage1.eval()
    with pytest.raises(ValueError, match="another network"):
        Int8Stage1(small, ranges)
    bad = tmp_path / "bad.int8.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.int8.json: cannot read"):
        load_ranges(bad)


def test_int8_runs_dense_on_the_cpu_from_a_weights_file():
    for kw, message in ((dict(dynconv=True), "dense"), (dict(random_init=True, seed=0), "checkpoint or random"),
                        (dict(backend="onnxruntime"), "torch backend")):
        with pytest.raises(ValueError, match=message):
            PoseEstimator(ModelConfig(precision="int8", torch_thread=False, **kw), track=UNTRACKED)
