"""The page in a real browser: Debian's headless Chromium, a fake webcam playing a real clip.

What is verified:
  * capture mode: the page opens the (fake) camera, sends JPEG frames over the websocket and gets
    pose messages back that match the protocol schema; the overlay canvas shows the very frames
    of the clip (compared with the clip itself); skeletons are drawn whenever a message has people.
  * broadcast mode: frames + poses pushed by the server (its own copy of the clip) are drawn.
  * drawing: a pose message built from COCO ground truth for a real photo is drawn over it, and
    the canvas has each person's track colour on their limbs.
  * the bundled weights end to end: the fake webcam's courtyard clip goes to a server running the
    default model; the page must get a person (always, not only "if any"), draw their limbs on the
    overlay in the colour the page's trackColor gives their id, and draw them in the 3D view, from
    finite 3D joints (the drawing checks fail if a stroke or a draw call is taken out).
Screenshots go to the artefacts folder (XNECT_TEST_ARTEFACTS, default out/test-artefacts).
Needs: apt-get install chromium chromium-driver; pip install selenium.
"""
from __future__ import annotations

import base64
import json
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from server_helpers import ARTEFACTS, DATA, LiveServer, clip_path, read_frames
from shared_data import require
from xnect_app import skeleton
from xnect_app.server import schemas
from xnect_app.types import Person

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip("Debian chromium + chromium-driver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

CLIP = "two_people_courtyard.mp4"
CLIP_WIDTH = 360


@pytest.fixture(scope="module")
def fake_camera(tmp_path_factory) -> Path:
    """The clip as MJPEG (JPEG frames back to back): Chromium's fake webcam loops over it."""
    path = tmp_path_factory.mktemp("cam") / "clip.mjpeg"
    with open(path, "wb") as f:
        for frame in read_frames(CLIP, n=40, width=CLIP_WIDTH):
            f.write(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return path


@pytest.fixture(scope="module")
def server():
    with LiveServer("--source", str(clip_path(CLIP))) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(fake_camera):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="xnect-chromium-")
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-video-capture={fake_camera}", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, js: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(js)
        if value:
            return value
        time.sleep(0.25)
    stats = driver.execute_script("return window.xnect && window.xnect.stats")
    status = driver.execute_script("return document.getElementById('status').textContent")
    raise AssertionError(f"timed out waiting for {js}; status {status!r}; stats {json.dumps(stats, default=str)[:800]}")


def canvas_image(driver, canvas_id: str = "overlay") -> np.ndarray:
    url = driver.execute_script(f"return document.getElementById('{canvas_id}').toDataURL('image/png')")
    return _decode_png_url(url)


def _decode_png_url(url: str) -> np.ndarray:
    data = base64.b64decode(url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def overlay_with_message(driver) -> tuple[np.ndarray, dict]:
    """The overlay canvas and the poses message drawn on it, read in one go (no frame in between)."""
    url, msg = driver.execute_script(
        "return [document.getElementById('overlay').toDataURL('image/png'), window.xnect.stats.lastDrawn]")
    return _decode_png_url(url), msg


def skeleton_mask(msg: dict, shape: tuple[int, int]) -> np.ndarray:
    """Pixels the overlay may have painted for the message's people (limbs, joints, id labels)."""
    h, w = shape
    line = max(2, round(min(w, h) / 120))
    mask = np.zeros((h, w), np.uint8)
    for person in msg["people"]:
        pts = [(int(round(k[0] * w)), int(round(k[1] * h))) if k[2] else None for k in person["kp2d_norm"]]
        for a, b in skeleton.LIMBS_2D:
            if pts[a] and pts[b]:
                cv2.line(mask, pts[a], pts[b], 1, line + 4)
        for p in pts:
            if p:
                cv2.circle(mask, p, line + 2, 1, -1)
        if pts[0]:
            font = max(12, line * 6)
            x, y = pts[0][0] + line * 2, pts[0][1] - line * 2
            cv2.rectangle(mask, (x - 2, y - font - 2), (x + font * 4, y + font // 2), 1, -1)
    return mask.astype(bool)


def best_clip_match(image: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Highest grey-level correlation between the image and a clip frame over the pixels not in
    `ignore` (where skeletons are drawn). Correlation, not a pixel tolerance: the fake webcam's
    YUV round trip shifts colours."""
    h, w = image.shape[:2]
    keep = np.ones((h, w), bool) if ignore is None else ~ignore
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float64)[keep]
    best = -1.0
    for f in read_frames(CLIP, n=40, width=CLIP_WIDTH):
        ref = cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        best = max(best, float(np.corrcoef(grey, ref.astype(np.float64)[keep])[0, 1]))
    return best


def check_live_page(driver, mode: str, frames: int) -> dict:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    wait_for(driver, f"return window.xnect && window.xnect.stats.framesDrawn >= {frames}")
    stats = driver.execute_script("return window.xnect.stats")
    (ARTEFACTS / f"browser_{mode}_stats.json").write_text(json.dumps(
        {k: v for k, v in stats.items() if k not in ("lastPoses", "lastDrawn")}, indent=2))
    schemas.SERVER_MESSAGE.validate_python(stats["lastPoses"])  # real messages match the schema
    assert stats["errors"] == 0, stats["lastError"]
    assert stats["posesReceived"] >= frames
    if mode == "capture":
        assert stats["framesSent"] >= stats["posesReceived"]
    # The overlay shows the clip's frames (not a blank or stale canvas) wherever no skeleton is drawn.
    image, drawn = overlay_with_message(driver)
    assert image.std() > 20, "overlay canvas is blank"
    cv2.imwrite(str(ARTEFACTS / f"overlay_{mode}.png"), image)
    covered = skeleton_mask(drawn, image.shape[:2])
    assert covered.mean() < 0.9, "skeletons cover the whole overlay"
    match = best_clip_match(image, ignore=covered)
    (ARTEFACTS / f"browser_{mode}_match.json").write_text(json.dumps({"covered": float(covered.mean()), "match": match}))
    assert match > 0.9, f"overlay does not show the camera's frames (best correlation {match:.2f})"
    # Skeletons: drawn for every message with people (an untrained model may find nobody).
    if stats["peopleSeen"] > 0:
        assert stats["skeletonsDrawn"] > 0 and stats["limbsDrawn"] > 0
    return stats


def test_capture_mode_sends_frames_and_draws_poses(server, browser):
    browser.get(f"{server.base}/?autostart=1")
    stats = check_live_page(browser, "capture", frames=5)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTEFACTS / "browser_capture.png"))
    latency = stats["latencyMs"]
    assert latency is not None and 0 < latency < 30_000
    status = server.status()
    assert status["clients"] == 1 and status["worker"]["frames_done"] >= 5
    browser.execute_script("window.xnect.stop()")


def test_broadcast_mode_draws_server_frames(server, browser):
    browser.get(f"{server.base}/?mode=broadcast&autostart=1")
    check_live_page(browser, "broadcast", frames=3)
    browser.save_screenshot(str(ARTEFACTS / "browser_broadcast.png"))
    assert server.status()["viewers"] == 1
    browser.execute_script("window.xnect.stop()")


def coco_people_message(min_keypoints: int = 10) -> tuple[Path, dict]:
    """A poses message from COCO ground truth for the dev image with the most annotated people."""
    ann_path = require("coco_dev/person_keypoints.json")
    coco = json.loads(ann_path.read_text())
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        if a["num_keypoints"] >= min_keypoints and not a["iscrowd"]:
            by_image.setdefault(a["image_id"], []).append(a)
    image_id, anns = max(by_image.items(), key=lambda kv: len(kv[1]))
    info = next(i for i in coco["images"] if i["id"] == image_id)
    w, h = info["width"], info["height"]
    people = []
    for track_id, a in enumerate(anns):
        coco_kp = np.array(a["keypoints"], dtype=np.float64).reshape(17, 3)
        kp2d = np.full((skeleton.NUM_JOINTS_2D, 3), np.nan)
        kp2d[:, 2] = 0
        for c, j in enumerate(skeleton.COCO17_FROM_2D):
            if coco_kp[c, 2] > 0:
                kp2d[j] = [coco_kp[c, 0], coco_kp[c, 1], 1.0]
        shoulders = kp2d[[2, 5]]
        if (shoulders[:, 2] > 0).all():  # neck: midpoint of the shoulders
            kp2d[skeleton.NECK] = [*shoulders[:, :2].mean(0), 1.0]
        kp3d = np.full((skeleton.NUM_JOINTS_3D, 3), np.nan)
        people.append(Person(track_id, 1.0, kp2d, kp3d, kp3d).to_dict((w, h)))
    msg = schemas.PosesMsg(frame_id=1, image_wh=[w, h], people=people,
                           server_ms=schemas.ServerTimings(queue=0, decode=0, infer=0, total=0),
                           batch_size=1, fps=0).model_dump(mode="json")
    return DATA / "coco_dev" / info["file_name"], msg


def test_recorded_message_draws_each_skeleton_in_its_track_colour(server, browser):
    image_path, msg = coco_people_message()
    browser.get(f"{server.base}/")
    wait_for(browser, "return window.xnect !== undefined", 30)
    meta = {"limbs_2d": [list(l) for l in skeleton.LIMBS_2D], "parents_3d": list(skeleton.PARENTS_3D),
            "track_colors_rgb": [[r, g, b] for b, g, r in skeleton.TRACK_COLORS_BGR]}
    data_url = "data:image/jpeg;base64," + base64.b64encode(image_path.read_bytes()).decode()
    limbs = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.xnect.drawRecorded(arguments[0], arguments[1], arguments[2]).then(done, e => done(String(e)));",
        data_url, msg, meta)
    assert isinstance(limbs, int) and limbs > 0, limbs
    drawn = canvas_image(browser)
    photo = cv2.imread(str(image_path))
    assert drawn.shape == photo.shape
    browser.save_screenshot(str(ARTEFACTS / "browser_recorded.png"))
    # Every limb's midpoint carries its person's colour (a few may be covered by joint dots or
    # by another person's limbs).
    hits = total = 0
    for person in msg["people"]:
        b, g, r = skeleton.TRACK_COLORS_BGR[person["id"] % len(skeleton.TRACK_COLORS_BGR)]
        kp = person["kp2d"]
        for a, c in skeleton.LIMBS_2D:
            if kp[a][2] and kp[c][2]:
                x = round((kp[a][0] + kp[c][0]) / 2)
                y = round((kp[a][1] + kp[c][1]) / 2)
                total += 1
                hits += bool(np.abs(drawn[y, x].astype(int) - [b, g, r]).max() <= 40)
    assert total >= 20 and hits >= 0.8 * total, (hits, total)
    # Away from the people, the canvas is the photo itself.
    assert np.abs(drawn[:10, :10].astype(int) - photo[:10, :10]).mean() < 6


# --- the bundled weights, end to end: real camera frames -> real model -> what the page draws ---

COLOUR_TOLERANCE = 40  # max channel difference: anti-aliased edges and the PNG round trip stay inside


def _rgb(css: str) -> tuple[int, int, int]:
    """'rgb(230, 25, 75)' (what the page's trackColor returns) -> (230, 25, 75)."""
    r, g, b = (int(v) for v in css[css.index("(") + 1:css.index(")")].split(","))
    return r, g, b


def _near(image_bgr: np.ndarray, rgb: tuple[int, int, int], tol: int = COLOUR_TOLERANCE) -> np.ndarray:
    r, g, b = rgb
    return np.abs(image_bgr.astype(int) - [b, g, r]).max(-1) <= tol


@pytest.fixture(scope="module")
def bundled_server():
    """`xnect-server` with the default (bundled) weights, at the input size the server tests use."""
    with LiveServer(bundled=True, input_size="512x320") as srv:
        yield srv


SNAPSHOT_JS = """
const done = arguments[arguments.length - 1];
// The page's own colour rule (web/js/overlay.js trackColor), from the module the page loaded.
import(new URL("js/overlay.js", document.baseURI).href).then((m) => {
  // One synchronous read: the canvases and the message drawn on them, no frame in between.
  const x = window.xnect, msg = x.stats.lastDrawn;
  done({
    msg, meta: x.meta, stats: { ...x.stats, lastPoses: null, lastDrawn: null },
    colors: msg.people.map((p, i) => m.trackColor(x.meta, p, i)),
    overlay: document.getElementById("overlay").toDataURL("image/png"),
    view3d: document.getElementById("view3d").toDataURL("image/png"),
  });
}, (e) => done({ error: String(e) }));
"""


def test_bundled_model_on_a_real_clip_draws_people_in_2d_and_3d(bundled_server, browser):
    """The fake webcam plays the two-people courtyard clip; the real server runs the bundled model
    on the page's frames; the page must draw the person it got, on the overlay (in the track colour
    the page picks for that id) and in the 3D view, with finite 3D joints."""
    from selenium.webdriver.support.ui import WebDriverWait

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    browser.get(f"{bundled_server.base}/?autostart=1")
    # Wait (on page state, not on time) for a drawn message with a person of >= 8 visible joints.
    person_drawn = ("const s = window.xnect && window.xnect.stats;"
                    "return !!(s && s.lastDrawn && s.lastDrawn.people.some("
                    "  (p) => p.kp2d_norm.filter((k) => k[2] !== null && k[2] > 0).length >= 8));")
    try:
        WebDriverWait(browser, 180, poll_frequency=0.2).until(lambda d: d.execute_script(person_drawn))
    except Exception as exc:
        stats = browser.execute_script("return window.xnect && {...window.xnect.stats, lastDrawn: null}")
        status = browser.execute_script("return document.getElementById('status').textContent")
        raise AssertionError(f"no person drawn; status {status!r}; stats {json.dumps(stats, default=str)[:1500]}") from exc
    snap = browser.execute_async_script(SNAPSHOT_JS)
    browser.save_screenshot(str(ARTEFACTS / "browser_bundled.png"))
    browser.execute_script("window.xnect.stop()")
    assert "error" not in snap, snap
    msg, meta, stats = snap["msg"], snap["meta"], snap["stats"]
    schemas.SERVER_MESSAGE.validate_python(msg)
    assert "random" not in meta["model"], meta["model"]
    assert stats["errors"] == 0, stats["lastError"]

    # (1) the page received (and drew) at least one person -- unconditionally
    assert stats["peopleSeen"] >= 1 and len(msg["people"]) >= 1
    assert stats["skeletonsDrawn"] >= 1 and stats["limbsDrawn"] >= 1
    person_i = max(range(len(msg["people"])),
                   key=lambda i: sum(1 for k in msg["people"][i]["kp2d_norm"] if k[2]))
    person = msg["people"][person_i]
    rgb = _rgb(snap["colors"][person_i])
    palette = meta["track_colors_rgb"]
    assert list(rgb) == palette[(person["id"] if person["id"] >= 0 else person_i) % len(palette)], \
        f"the page colours track {person['id']} {rgb}, not the server's palette entry"

    # (2) the overlay has this person's skeleton in their track colour
    overlay = _decode_png_url(snap["overlay"])
    view3d = _decode_png_url(snap["view3d"])
    cv2.imwrite(str(ARTEFACTS / "overlay_bundled.png"), overlay)
    cv2.imwrite(str(ARTEFACTS / "view3d_bundled.png"), view3d)
    h, w = overlay.shape[:2]
    assert (w, h) == tuple(msg["image_wh"])
    coloured = _near(overlay, rgb)
    # the camera frames themselves have (almost) none of that colour: the pixels are the drawing
    clip_coloured = max(int(_near(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA), rgb).sum())
                        for f in read_frames(CLIP, n=40, width=CLIP_WIDTH))
    # ... and they lie on the person's limbs: the centre lines of the limbs the page strokes
    pts = [(int(round(k[0] * w)), int(round(k[1] * h))) if k[2] else None for k in person["kp2d_norm"]]
    centre = np.zeros((h, w), np.uint8)
    for a, b in meta["limbs_2d"]:
        if pts[a] and pts[b]:
            cv2.line(centre, pts[a], pts[b], 1, 1)
    for p in pts:  # the white joint dots cover the limb ends
        if p:
            cv2.circle(centre, p, 4, 0, -1)
    centre = centre.astype(bool)
    on_limbs = float(coloured[centre].mean()) if centre.any() else 0.0
    report = {"person": {"id": person["id"], "rgb": rgb, "visible_2d": sum(1 for k in person["kp2d_norm"] if k[2])},
              "overlay_coloured": int(coloured.sum()), "clip_coloured_max": clip_coloured,
              "limb_centre_pixels": int(centre.sum()), "limb_centre_coloured": on_limbs}
    # (3) the 3D view: finite joints in the message, and a skeleton drawn in the same colour
    kp3d = np.array([[np.nan if v is None else v for v in q] for q in person["kp3d_cam_mm"]], dtype=float)
    root = np.array([np.nan if v is None else v for v in person["root_cam_mm"]], dtype=float)
    view_coloured = _near(view3d, rgb)
    # background #0d0f13 and floor grid #2a2f3a (web/js/view3d.js), and their blends, are dark:
    # every channel <= 0x3a; anything brighter is a skeleton
    other = view3d.max(-1) > 0x3a + 40
    report.update(view3d_coloured=int(view_coloured.sum()), view3d_not_background_or_grid=int(other.sum()))
    (ARTEFACTS / "browser_bundled_pixels.json").write_text(json.dumps(report, indent=2))

    assert report["person"]["visible_2d"] >= 8, report
    assert coloured.sum() >= 300, f"too few skeleton pixels in the track colour on the overlay: {report}"
    assert coloured.sum() >= 10 * (clip_coloured + 10), f"the track colour is not the drawing's: {report}"
    assert centre.sum() >= 100 and on_limbs >= 0.6, f"the limbs are not drawn where the person is: {report}"

    assert kp3d.shape == (skeleton.NUM_JOINTS_3D, 3) and np.isfinite(kp3d).all(), kp3d
    assert np.isfinite(root).all() and root[2] > 0, root
    spread = np.ptp(kp3d, axis=0)  # a body in mm, not a point or a blow-up
    assert 500 < spread.max() < 3000, spread
    assert view_coloured.sum() >= 150, f"no 3D skeleton in the track colour: {report}"
    assert other.sum() >= 150, f"3D view shows only its background and grid: {report}"
