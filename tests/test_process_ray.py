"""xnect-process --ray on a real two-worker Ray cluster on loopback (a head node started with `ray start`)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'xnect_app[ray]')")

from test_cli_process import ENV, FAST, TWO, cli, frames_of, jsonl_records  # noqa: E402

from shared_data import needs_data  # noqa: E402

pytestmark = needs_data("videos/two_people_courtyard.mp4")
RAY = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A head node with 2 CPUs on 127.0.0.1 (its own temp dir; stopped afterwards)."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="xr", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**ENV, "RAY_USAGE_STATS_ENABLED": "0"}
    start = subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                            "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
                            "--temp-dir", temp], capture_output=True, text=True, timeout=180, env=env)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, env=env)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """Two real clips of 10 and 8 frames (cut from the two-people clip)."""
    import cv2
    d = tmp_path_factory.mktemp("rayclips")
    frames = frames_of(TWO)
    out = []
    for name, sl in (("first", slice(0, 10)), ("second", slice(20, 28))):
        path = d / f"{name}.mp4"
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (270, 480))
        for f in frames[sl]:
            w.write(cv2.resize(f, (270, 480)))
        w.release()
        out.append(path)
    return out


def _people(path: Path) -> list[np.ndarray]:
    _, frames = jsonl_records(path)
    return [np.array([[k[:2] for k in p["kp2d"]] for p in f["people"]], dtype=float) for f in frames]


def test_two_ray_workers_share_the_inputs_and_write_what_a_local_run_writes(cluster, inputs, tmp_path):
    t0 = time.monotonic()
    r = cli(*map(str, inputs), "--out-dir", str(tmp_path / "ray"), "--ray", cluster, "--workers", "2",
            "--csv", "--no-progress", *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 done, 0 skipped, 0 failed" in r.stdout
    workers = set()
    for clip, n in zip(inputs, (10, 8)):
        manifest = json.loads((tmp_path / "ray" / f"{clip.stem}.done.json").read_text())
        assert manifest["frames"] == n and set(manifest["outputs"]) == {f"{clip.stem}.jsonl", f"{clip.stem}.csv"}
        workers.add(manifest["worker"])
    # two actor processes, neither of them the driver
    assert len(workers) == 2, workers
    ray_seconds = time.monotonic() - t0

    local = cli(*map(str, inputs), "--out-dir", str(tmp_path / "local"), "--csv", "--no-progress", *FAST)
    assert local.returncode == 0, local.stderr[-3000:]
    for clip in inputs:
        a, b = _people(tmp_path / "ray" / f"{clip.stem}.jsonl"), _people(tmp_path / "local" / f"{clip.stem}.jsonl")
        assert len(a) == len(b)
        for pa, pb in zip(a, b):
            assert pa.shape == pb.shape
            np.testing.assert_allclose(np.nan_to_num(pa, nan=-1), np.nan_to_num(pb, nan=-1), atol=1e-3)
    print(f"ray run: {ray_seconds:.1f} s for both clips (start-up included)")

    # A second run finds the outputs complete and skips both.
    again = cli(*map(str, inputs), "--out-dir", str(tmp_path / "ray"), "--ray", cluster, "--workers", "2",
                "--csv", "--no-progress", *FAST)
    assert again.returncode == 0 and "0 done, 2 skipped" in again.stdout, again.stdout + again.stderr[-2000:]


def test_a_damaged_input_fails_alone_on_the_cluster(cluster, inputs, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(4096))
    r = cli(str(bad), str(inputs[1]), "--out-dir", str(tmp_path / "out"), "--ray", cluster, "--workers", "2",
            "--no-progress", *FAST)
    assert r.returncode == 1
    assert "1 done, 0 skipped, 1 failed" in r.stdout
    errors = [line for line in r.stderr.splitlines() if line.startswith("xnect-process: error:")]
    assert len(errors) == 1 and "broken.mp4" in errors[0]
    assert (tmp_path / "out" / f"{inputs[1].stem}.done.json").is_file()
    assert not list((tmp_path / "out").glob("broken*"))


def test_ray_options_are_checked_before_any_work(cluster, inputs, tmp_path):
    r = cli(str(inputs[0]), "--out-dir", str(tmp_path), "--ray", cluster, "--shard", "1/2", *FAST)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "--shard and --ray" in r.stderr
    r = cli(str(inputs[0]), "--out-dir", str(tmp_path), "--ray", cluster, "--workers", "3", *FAST)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "do not fit" in r.stderr, r.stderr
