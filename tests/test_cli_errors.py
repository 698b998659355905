"""The exit-status rule of docs/cli.md, for every console script: a missing input exits 1 with one
line on stderr, a bad flag or a bad value exits 2 (argparse), each before any model is loaded.
The cases are those of scripts/cli_error_table.py, which prints the table of docs/cli.md."""
from __future__ import annotations

import importlib
import importlib.util
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("cli_error_table", REPO / "scripts" / "cli_error_table.py")
table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table)


def run_main(tool: str, argv: list[str], capsys) -> tuple[int, list[str]]:
    """(exit status, non-empty stderr lines) of the console script's main(argv), in this process."""
    main = importlib.import_module(table.SCRIPTS[tool]).main
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    code = 0 if code is None else code if isinstance(code, int) else 1
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_the_cases_cover_every_console_script():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {name: target.split(":")[0] for name, target in scripts.items()} == table.SCRIPTS
    for tool in scripts:
        assert {case for t, case, _ in table.CASES if t == tool} == set(table.EXPECTED), tool


@pytest.mark.parametrize("tool,case,argv", table.CASES, ids=[f"{t} {c}: {' '.join(a)}" for t, c, a in table.CASES])
def test_exit_status_and_one_line(tool, case, argv, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the cases' paths are relative and do not exist
    code, err = run_main(tool, argv, capsys)
    assert code == table.EXPECTED[case], (code, err)
    assert len(err) == 1 and err[0].startswith(f"{tool}") and ": error: " in err[0], err
    assert "Traceback" not in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_process_reports_several_missing_inputs_on_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, err = run_main("xnect-process", ["a.mp4", "b.mp4", "--out-dir", "out"], capsys)
    assert code == 1 and len(err) == 1, err
    assert "a.mp4: no such file or folder" in err[0] and "b.mp4: no such file or folder" in err[0]


def test_options_that_exclude_each_other_are_usage_errors(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for tool, argv in (("xnect-demo", ["--video", "x.mp4", "--flip", "--dynconv"]),
                       ("xnect-export", ["onnx", "--out", "o", "--calibration", "imgs"]),
                       ("xnect-bench", ["tta", "--scales", "1,0.5"])):
        code, err = run_main(tool, argv, capsys)
        assert code == 2 and len(err) == 1 and ": error: " in err[0], (tool, err)


def test_eval_missing_weights_names_its_own_options(capsys, monkeypatch, tmp_path):
    import json

    (tmp_path / "gt.json").write_text(json.dumps({"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "person", "keypoints": [], "skeleton": []}]}))
    monkeypatch.chdir(tmp_path)
    code, err = run_main("xnect-eval", ["coco", "gt.json", "--weights", "no_such.pt"], capsys)
    assert code == 1 and len(err) == 1, err
    assert "no_such.pt" in err[0] and "--random-weights" not in err[0] and "random_init" not in err[0]
    assert "--weights PATH or --checkpoint PATH" in err[0]


def test_bench_json_is_a_switch_everywhere():
    from xnect_app.cli.bench import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name, p in sub.items():
        action = next(a for a in p._actions if "--json" in a.option_strings)
        assert action.nargs == 0, f"xnect-bench {name} --json takes a value"


def test_fastpath_channels_last_runs_a_network_with_a_mask_unit():
    """The runtime asks Stage I for cfg and set_sparse (weights with a DynConv mask unit run dense)."""
    import numpy as np

    from xnect_app.bench.fastpath import ChannelsLast, fused_stage1
    from xnect_app.estimator import PoseEstimator
    from xnect_app.runtime.config import ModelConfig
    from xnect_app.weights import random_networks

    s1, s2, name = random_networks("selecsls42b", 0, True)
    assert s1.cfg.dynconv
    wrapped = ChannelsLast(fused_stage1(s1.eval()))
    est = PoseEstimator.from_networks(wrapped, s2, ModelConfig(input_size=(128, 80), precision="fp32",
                                                               torch_thread=False), name=name)
    assert wrapped.bf16_inference is False and wrapped.net.bf16_inference is False
    res = est.detect_batch([np.zeros((80, 128, 3), np.uint8)])[0]
    assert res.timings_ms["stage1"] > 0
