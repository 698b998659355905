"""The packed training data (scripts/pack_training_data.py) trains like the original, with --amp."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xnect_app.train.data import build_training_dataset
from xnect_app.train.trainer import TrainConfig, Trainer

from shared_data import DATA, REPO, needs_data

pytestmark = needs_data("lspet")


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "data"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "pack_training_data.py"), "--data-root", str(DATA),
                        "--out", str(out), "--limit", "6"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def test_packed_images_keep_their_labels_and_teacher_labels(pack):
    ann = json.loads((pack / "lspet" / "annotations.json").read_text())
    assert len(ann["images"]) == 6 and all(im["file"].endswith(".webp") for im in ann["images"])
    original = {im["file"]: im for im in json.loads((DATA / "lspet" / "annotations.json").read_text())["images"]}
    for im in ann["images"]:
        assert (pack / "lspet" / im["file"]).is_file()
        assert im["joints"] == original[im["original_file"]]["joints"]
    ds = build_training_dataset(pack, size=(128, 128), teacher_cache=str(REPO / "data_cache"))
    lspet = [r for r in ds.real if r.source == "lspet"]
    assert len(lspet) == 6 and all(r.conf_3d[0] > 0 for r in lspet), "the teacher's 3D follows the renamed files"
    assert {r.source for r in ds.real} == {"lspet", "coco_train_extra"}


def test_training_runs_on_the_pack_with_bfloat16_autocast(pack, tmp_path):
    threads = torch.get_num_threads()
    try:
        cfg = TrainConfig(out_dir=str(tmp_path / "run"), backbone="selecsls42b", size=(128, 128), batch_size=2,
                          epoch_steps=2, max_steps=2, data_root=str(pack), dev_set=None, workers=0, threads=1,
                          teacher_cache=str(REPO / "data_cache"), amp=True, ema_decay=0)
        Trainer(cfg).run()
    finally:
        torch.set_num_threads(threads)
    ck = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert ck["step"] == 2
    last = ck["history"][-1]
    assert all(type(last[k]) is float and np.isfinite(last[k]) for k in ("total", "heatmap", "paf", "enc3d"))
    assert 0 <= last["data_wait_s"] <= last["seconds"], "the log says how long the steps waited for data"
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
