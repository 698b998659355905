"""A built wheel works out of the box: it carries the default weights and the browser page."""
from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import cv2
from server_helpers import read_frames

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_weights_and_web_page_and_finds_them_when_installed(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(REPO), "-w", str(dist)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(dist.glob("xnect_app-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("xnect_app/_data/models/xnect_selecsls60.pt", "xnect_app/_data/models/xnect_selecsls60.int8.json",
                    "xnect_app/_data/models/README.md",
                    "xnect_app/_data/web/index.html", "xnect_app/_data/web/js/main.js"):
        assert shipped in names

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    probe = (
        "import xnect_app, numpy as np\n"
        "from xnect_app.estimator import ModelConfig, PoseEstimator\n"
        "from xnect_app.weights import default_weights_path\n"
        "from xnect_app.server.state import DEFAULT_WEB_DIR\n"
        "print(xnect_app.__file__)\n"
        "print(default_weights_path())\n"
        "print((DEFAULT_WEB_DIR / 'index.html').is_file())\n"
        "import cv2, sys\n"
        "est = PoseEstimator(ModelConfig(precision='fp32'))\n"
        "print(len(est(cv2.imread(sys.argv[1])).people))\n"
    )
    frame = read_frames("two_people_courtyard.mp4", n=1, width=None)[0]  # two people, clearly seen
    cv2.imwrite(str(tmp_path / "two_people.png"), frame)
    run = subprocess.run([str(py), "-c", probe, str(tmp_path / "two_people.png")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    package, weights, web_ok, people = run.stdout.split()
    assert package.startswith(str(env_dir))  # the installed wheel, not the checkout
    assert weights.startswith(str(env_dir)) and Path(weights).is_file()
    assert web_ok == "True"
    assert int(people) >= 1, "the shipped weights find nobody on a frame with two people"
