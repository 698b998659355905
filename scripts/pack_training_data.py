"""Pack the training data small enough to travel with the repository to a lent GPU machine.

The device tool sends the checkout and at most 64 MiB in all (the repository itself is about
42 MB), and nothing from ../shared. This writes a data root that `xnect-train stage1 --data-root`
reads like ../shared/data: coco_train_extra and backgrounds re-encoded as WebP, and as many
LSPET images as the size budget allows, those with teacher labels (3D, face points, masks for
compositing) first. Image files are renamed (.webp), so each record keeps its original name in
"original_file" and the teacher labels in data_cache/ still match. By default the pack takes
what the checkout leaves of the 64 MiB, less 2 MB.

    python scripts/pack_training_data.py --out gpu_pack
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xnect_app.train.data import list_images, read_training_source  # noqa: E402


DEVICE_LIMIT_BYTES = 64 * 2**20


def checkout_bytes(skip: Path) -> int:
    """Bytes of what the device tool sends besides the pack: tracked and not-ignored files."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                               capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit("pack_training_data: cannot list the checkout with git; give --max-mb") from None
    skip = skip.resolve()
    total = 0
    for name in filter(None, names):
        p = (REPO / name).resolve()
        if p.is_file() and skip not in p.parents:
            total += p.stat().st_size
    return total


def encode(src: Path, dst: Path, quality: int, max_side: int | None = None) -> int:
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"pack_training_data: cannot read {src}")
    if max_side and max(img.shape[:2]) > max_side:
        s = max_side / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise SystemExit(f"pack_training_data: cannot encode {src} as WebP")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(buf.tobytes())
    return len(buf)


def pack_coco(src: Path, out: Path, quality: int, limit: int | None = None) -> int:
    data = json.loads((src / "person_keypoints.json").read_text())
    if limit is not None:
        data["images"] = data["images"][:limit]
        ids = {im["id"] for im in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    total = 0
    for im in data["images"]:
        name = Path(im["file_name"])
        new = Path("images") / (name.stem + ".webp")
        total += encode(src / im["file_name"], out / new, quality)
        im["original_file"], im["file_name"] = im["file_name"], str(new)
    text = json.dumps(data)
    (out / "person_keypoints.json").write_text(text)
    return total + len(text)


def pack_backgrounds(src: Path, out: Path, quality: int, max_side: int, limit: int | None = None) -> int:
    return sum(encode(Path(f), out / (Path(f).stem + ".webp"), quality, max_side)
               for f in list_images(src)[:limit])


def pack_lspet(src: Path, out: Path, quality: int, budget: int, teacher_cache: str, seed: int,
               limit: int | None = None) -> tuple[int, int]:
    ann = json.loads((src / "annotations.json").read_text())
    recs = read_training_source(src, "lspet", teacher_cache)
    taught = np.array([float(r.conf_3d[0]) > 0 for r in recs])
    order = np.random.default_rng(seed).permutation(len(recs))
    order = np.concatenate([order[taught[order]], order[~taught[order]]])[:limit]
    kept, total = [], 0
    for i in order:
        im = dict(ann["images"][i])
        new = Path("images") / (Path(im["file"]).stem + ".webp")
        size = encode(src / im["file"], out / new, quality)
        total += size + 200  # its annotation
        if total > budget:
            (out / new).unlink()
            break
        im["original_file"], im["file"] = im["file"], str(new)
        kept.append(im)
    kept.sort(key=lambda im: im["file"])
    (out / "annotations.json").write_text(json.dumps({**ann, "images": kept}))
    return len(kept), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(REPO / "gpu_pack"))
    ap.add_argument("--max-mb", type=float,
                    help="size of the whole pack in MB (default: what the checkout leaves of 64 MiB, less 2 MB)")
    ap.add_argument("--quality", type=int, default=60, help="WebP quality of LSPET images (default %(default)s)")
    ap.add_argument("--teacher-cache", default=str(REPO / "data_cache"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="at most this many images of each set (quick checks)")
    a = ap.parse_args()
    root, out = Path(a.data_root), Path(a.out)
    for name in ("lspet", "coco_train_extra", "backgrounds"):
        if not (root / name).is_dir():
            raise SystemExit(f"pack_training_data: {root / name} not found (point --data-root at the data)")
    if a.max_mb is None:
        a.max_mb = (DEVICE_LIMIT_BYTES - checkout_bytes(out)) / 1e6 - 2.0
        print(f"pack budget {a.max_mb:.1f} MB (the checkout takes the rest of the 64 MiB)")
    if out.exists():
        shutil.rmtree(out)
    coco = pack_coco(root / "coco_train_extra", out / "coco_train_extra", quality=75, limit=a.limit)
    bg = pack_backgrounds(root / "backgrounds", out / "backgrounds", quality=65, max_side=768, limit=a.limit)
    budget = int(a.max_mb * 1e6) - coco - bg
    if budget <= 0:
        raise SystemExit(f"pack_training_data: --max-mb {a.max_mb} leaves no room for LSPET")
    n, lsp = pack_lspet(root / "lspet", out / "lspet", a.quality, budget, a.teacher_cache, a.seed, a.limit)
    print(f"wrote {out}: coco_train_extra {coco / 1e6:.1f} MB, backgrounds {bg / 1e6:.1f} MB, "
          f"lspet {n} images {lsp / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
