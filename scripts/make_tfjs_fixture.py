"""Reference outputs of MoveNet MultiPose and Thunder from TensorFlow.js, for the parity test of
our torch runner (tests/test_teachers.py). Needs Node.js and npm (installs tfjs 4.22.0 with the
wasm backend into a temporary folder) and the teacher models (scripts/fetch_teachers.sh).

    python scripts/make_tfjs_fixture.py IMAGE [--out tests/data/movenet_tfjs_reference.npz]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np

from xnect_app.teachers.movenet import (MULTIPOSE_CENTER, MULTIPOSE_KEYPOINTS, THUNDER_KEYPOINTS,
                                        models_dir)

TFJS = ["@tensorflow/tfjs-core@4.22.0", "@tensorflow/tfjs-converter@4.22.0", "@tensorflow/tfjs-backend-wasm@4.22.0"]
HERE = Path(__file__).resolve().parent
KEPT = [0, 5, 9, 15]  # heatmap channels kept: nose, left shoulder, wrist, ankle (COCO-17 order)


def run_tfjs(node_dir: Path, model: Path, input_name: str, arr: np.ndarray, outputs: list[str], work: Path):
    raw = work / f"{model.stem}.raw"
    arr.astype("<i4").tofile(raw)
    out = work / model.stem
    job = {"input": input_name, "feeds": [{"file": str(raw), "shape": [1, *arr.shape]}],
           "outputs": outputs, "out": str(out)}
    (work / "job.json").write_text(json.dumps(job))
    subprocess.run(["node", str(HERE / "tfjs_reference.js"), str(model), str(work / "job.json")], check=True,
                   env={"NODE_PATH": str(node_dir / "node_modules"), "PATH": "/usr/bin:/bin:/usr/local/bin"})
    res = json.loads((out / "result.json").read_text())
    return [np.fromfile(out / f"0_{k}.bin", np.float32).reshape(shape)
            for k, shape in enumerate(res["runs"][0]["shapes"])], res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--out", default="tests/data/movenet_tfjs_reference.npz")
    a = ap.parse_args()
    img = cv2.imread(a.image)
    if img is None:
        raise SystemExit(f"cannot read {a.image}")
    models = models_dir()
    rgb = np.ascontiguousarray(img[:, :, ::-1])
    multipose_in = cv2.resize(rgb, (256, 192), interpolation=cv2.INTER_AREA)
    h, w = rgb.shape[:2]
    side = min(h, w)
    thunder_in = cv2.resize(rgb[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side],
                            (256, 256), interpolation=cv2.INTER_AREA)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(["npm", "install", "--silent", "--prefix", str(work), *TFJS], check=True)
        mp, res = run_tfjs(work, models / "movenet-multipose.json", "input", multipose_in,
                           ["Identity", MULTIPOSE_CENTER, MULTIPOSE_KEYPOINTS], work)
        th, _ = run_tfjs(work, models / "movenet-thunder.json", "input:0", thunder_in,
                         ["Identity", THUNDER_KEYPOINTS], work)
    png = lambda a: np.frombuffer(cv2.imencode(".png", a)[1].tobytes(), np.uint8)  # noqa: E731 (lossless)
    np.savez_compressed(a.out, multipose_input_png=png(multipose_in), multipose_output=mp[0],
                        multipose_centre=mp[1].astype(np.float16),
                        multipose_keypoints=mp[2][..., KEPT].astype(np.float16),
                        thunder_input_png=png(thunder_in), thunder_output=th[0],
                        thunder_keypoints=th[1][..., KEPT].astype(np.float16),
                        meta=np.array(json.dumps({"tfjs": res["tfjs"], "backend": res["backend"],
                                                  "image": Path(a.image).name})))
    print(f"{a.out}: tfjs {res['tfjs']} ({res['backend']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
