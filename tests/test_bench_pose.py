"""xnect-bench pose: post-processing time against the number of people."""
from __future__ import annotations

import json

import numpy as np
import pytest

from xnect_app.bench.pose import STAGES, bench_people, network_lifter, people_cost
from xnect_app.cli.bench import main
from xnect_app.pose.decode import decode
from xnect_app.pose.synthetic import random_scene
from xnect_app.pose.targets import render_targets


def test_the_bundled_stage2_lifts_every_decoded_person():
    scene = random_scene(np.random.default_rng(0), 4, image_size=(512, 320), layout="grid")
    maps = render_targets(scene.kp2d, scene.kp3d_rel_mm, (512, 320))
    people = decode(maps["heatmaps"], maps["pafs"], maps["enc3d"])
    lifted = network_lifter()(people)
    assert lifted.shape == (4, 21, 3) and np.isfinite(lifted).all()
    assert 100 < np.median(np.linalg.norm(lifted, axis=-1)) < 1500    # millimetres from the pelvis


def test_every_stage_is_timed_for_every_person_found():
    row = bench_people(3, runs=2, warmup=1, stage2=network_lifter())
    assert row["found"] == 3
    for key in ("median_ms", "median_cpu_ms"):
        assert all(row[key][s] > 0 for s in STAGES)
        assert np.isclose(row[key]["stage3"], row[key]["tracking"] + row[key]["ik"], rtol=0.5)


def test_people_cost_is_the_added_time_over_a_frame_of_the_fewest():
    rows = [{"people": 15, "median_ms": {"total": 14.0}}, {"people": 1, "median_ms": {"total": 4.0}}]
    cost = people_cost(rows, {"preprocess": 2.0, "stage1": 94.0})
    assert cost["frame_ms"] == 100.0 and cost["added_ms"] == 10.0 and np.isclose(cost["share"], 0.1)
    assert (cost["fewest"], cost["most"]) == (1, 15)


def test_cli_json_rows_and_a_missing_video(capsys, tmp_path):
    assert main(["pose", "--people", "1,2", "--runs", "2", "--stage2", "readout", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["people"] for r in rows] == [1, 2] and [r["found"] for r in rows] == [1, 2]
    assert set(rows[0]["median_ms"]) >= {"decode", "stage2", "root", "tracking", "ik", "stage3", "total"}
    with pytest.raises(SystemExit) as exit_:
        main(["pose", "--people", "1", "--video", str(tmp_path / "none.avi")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1 and "none.avi: no such video" in err[0]
