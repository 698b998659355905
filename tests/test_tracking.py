"""One Euro smoothing and identity tracking."""
from __future__ import annotations

import numpy as np

from xnect_app import skeleton
from xnect_app.pose.kinematics import bone_lengths_of
from xnect_app.pose.one_euro import ONE_EURO_2D, ONE_EURO_3D, OneEuroFilter, filter_many
from xnect_app.pose.synthetic import place_people, project, random_people
from xnect_app.pose.tracking import Tracker, TrackerConfig
from xnect_app.types import Intrinsics

FPS = 30.0


def _filter(f: OneEuroFilter, xs: np.ndarray) -> np.ndarray:
    return np.array([f(x, t=i / FPS) for i, x in enumerate(xs)])


def _jitter(x: np.ndarray) -> float:
    """Mean frame-to-frame movement: what a viewer sees as shaking."""
    return float(np.abs(np.diff(x, axis=0)).mean())


def _xcorr_lag(y: np.ndarray, truth: np.ndarray, max_shift: int = 15) -> float:
    """Delay (frames, sub-frame) maximising the correlation of y with the true signal."""
    y, truth = y - y.mean(), truth - truth.mean()
    c = np.array([np.dot(y[s:], truth[:len(truth) - s]) for s in range(max_shift)])
    k = int(np.argmax(c))
    if 0 < k < max_shift - 1:
        return k + 0.5 * (c[k - 1] - c[k + 1]) / (c[k - 1] - 2 * c[k] + c[k + 1])
    return float(k)


def test_one_euro_lowers_jitter_on_a_static_joint():
    rng = np.random.default_rng(0)
    raw3d = 500.0 + rng.normal(0, 20.0, (300, 21, 3))          # 20 mm noise, mm
    out3d = _filter(OneEuroFilter(**ONE_EURO_3D), raw3d)
    assert _jitter(raw3d[30:]) > 3 * _jitter(out3d[30:])
    raw2d = 200.0 + rng.normal(0, 1.5, (300, 19, 2))            # 1.5 px noise, person ~150 px
    out2d = _filter(OneEuroFilter(**ONE_EURO_2D, speed_scale=150 / 17), raw2d)
    assert _jitter(raw2d[30:]) > 3 * _jitter(out2d[30:])


def test_one_euro_follows_motion_within_two_frames():
    rng = np.random.default_rng(1)
    t = np.arange(300) / FPS
    for hz in (0.5, 1.0, 2.0):                                    # a waving hand, 30 cm amplitude
        truth = 300.0 * np.sin(2 * np.pi * hz * t)
        out = _filter(OneEuroFilter(**ONE_EURO_3D), truth + rng.normal(0, 20.0, t.shape))
        assert _xcorr_lag(out[30:], truth[30:]) < 2.0
    for speed_mm_s in (500.0, 1400.0):                            # walking: steady-state delay
        truth = speed_mm_s * t
        out = _filter(OneEuroFilter(**ONE_EURO_3D), truth)
        assert np.mean((truth - out)[60:]) / (speed_mm_s / FPS) < 2.0


def test_one_euro_restarts_a_joint_that_comes_back():
    f = OneEuroFilter(**ONE_EURO_3D)
    for i in range(10):
        f(np.array([0.0, 0.0]), t=i / FPS)
    gone = f(np.array([np.nan, 0.0]), t=10 / FPS)
    assert np.isnan(gone[0]) and gone[1] == 0.0
    back = f(np.array([900.0, 0.0]), t=11 / FPS)
    assert back[0] == 900.0                    # no drag from where it was before
    smoothed = f(np.array([1000.0, 0.0]), t=12 / FPS)
    assert 900.0 < smoothed[0] < 1000.0


def test_one_euro_uses_timestamps():
    xs = np.linspace(0, 100, 20)
    a = OneEuroFilter(**ONE_EURO_3D, freq=30.0)
    b = OneEuroFilter(**ONE_EURO_3D, freq=30.0)
    ya = [a(x, t=i / 30.0) for i, x in enumerate(xs)]
    yb = [b(x, t=i / 10.0) for i, x in enumerate(xs)]    # same samples, 3x further apart
    assert np.allclose(ya[0], yb[0]) and abs(yb[-1] - xs[-1]) < abs(ya[-1] - xs[-1])


def test_filters_stepped_together_equal_filters_stepped_alone():
    rng = np.random.default_rng(0)
    alone = [OneEuroFilter(**ONE_EURO_2D) for _ in range(3)]
    together = [OneEuroFilter(**ONE_EURO_2D) for _ in range(3)]
    scale = np.array([1.0, 3.0, 10.0])
    for i in range(12):
        xs = rng.normal(100.0, 5.0, (3, 4, 2)) + 10.0 * i
        if i % 4 == 1:
            xs[1, 2] = np.nan                                      # a joint that comes and goes
        t = None if i == 5 else i / FPS                            # one frame without a timestamp
        k = slice(None) if i >= 3 else slice(0, 2)                 # the third filter starts later
        one = np.stack([f(x, t=t, speed_scale=s) for f, x, s in zip(alone[k], xs[k], scale[k])])
        both = filter_many(together[k], xs[k], t, scale[k, None, None])
        np.testing.assert_allclose(both, one, equal_nan=True)


def crossing_walk(n_frames: int = 60, seed: int = 0):
    """Two people with the same pose and build walking past each other (A near, left to right;
    B half a metre further, right to left)."""
    rng = np.random.default_rng(seed)
    intr = Intrinsics.from_fov(512, 320, 60)
    people = {k: np.repeat(v[:1], 2, 0) for k, v in random_people(rng, 1, spread=0.5, yaw_range_deg=30).items()}
    frames = []
    for f in range(n_frames):
        s = f / (n_frames - 1)
        x = np.array([-1500 + 3000 * s, 1500 - 3000 * s])
        z = np.array([4000.0, 4500.0])
        root = np.stack([x, np.full(2, 300.0), z], 1)
        centers = project(root, intr)
        scene = place_people(people, centers, z, intr, (512, 320))
        dets = []
        for i in range(2):
            kp2d = scene.kp2d[i].copy()
            kp2d[:, :2] += rng.normal(0, 1.5, (19, 2))
            rel = scene.kp3d_rel_mm[i] + rng.normal(0, 15.0, (21, 3))
            dets.append({"who": i, "kp2d": kp2d, "kp3d_rel_mm": rel,
                         "kp3d_cam_mm": scene.kp3d_cam_mm[i] + rng.normal(0, 30.0, (21, 3))})
        frames.append((dets, scene, intr))
    return frames


def test_two_people_crossing_keep_their_identities():
    frames = crossing_walk()
    tracker = Tracker()
    ids = {0: set(), 1: set()}
    rng = np.random.default_rng(5)
    crossed = False
    for f, (dets, scene, intr) in enumerate(frames):
        if 28 <= f <= 31:
            dets = [d for d in dets if d["who"] == 0]      # the far person is hidden behind
        order = rng.permutation(len(dets))                 # detection order means nothing
        dets = [dets[k] for k in order]
        out = tracker.update(dets, timestamp=f / FPS, intrinsics=intr)
        for d, p in zip(dets, out):
            ids[d["who"]].add(p.track_id)
        pelvis = scene.kp2d[:, skeleton.NECK, 0]
        crossed |= abs(pelvis[0] - pelvis[1]) < 10
    assert crossed
    assert len(ids[0]) == 1 and len(ids[1]) == 1 and ids[0] != ids[1]


def test_missing_joints_as_nan_do_not_break_matching():
    """The estimator marks joints it did not find as NaN with confidence 0."""
    frames = crossing_walk(n_frames=40)[:6]
    tracker = Tracker()
    ids = []
    for f, (dets, _, intr) in enumerate(frames):
        dets = [dict(d, kp2d=d["kp2d"].copy()) for d in dets]
        for d in dets:
            d["kp2d"][[4, 7, 10], :2] = np.nan
            d["kp2d"][[4, 7, 10], 2] = 0.0
        ids.append(sorted(p.track_id for p in tracker.update(dets, timestamp=f / FPS, intrinsics=intr)))
    assert ids == [[1, 2]] * 6


def test_tracks_end_after_max_age_and_new_people_get_ids_once_confirmed():
    frames = crossing_walk(n_frames=40)
    tracker = Tracker(max_age=2)
    first = tracker.update(frames[0][0][:1], timestamp=0.0)
    assert first[0].track_id == 1                          # a stream's first frame: at once
    for f in range(1, 5):                                  # person gone for 4 frames > max_age
        assert tracker.update([], timestamp=f / FPS) == []
    ids = [tracker.update(frames[f][0][:1], timestamp=f / FPS)[0].track_id for f in range(5, 9)]
    confirm = tracker.cfg.confirm_frames
    assert ids[:confirm - 1] == [-1] * (confirm - 1)       # tentative: no id yet
    assert ids[confirm - 1] == 2 and ids[confirm:] == [2] * (4 - confirm)
    both = tracker.update(frames[9][0], timestamp=9 / FPS)
    assert sorted(p.track_id for p in both) == [-1, 2]     # the newcomer waits for its id


def test_track_bone_lengths_are_the_median_of_the_first_frames():
    frames = crossing_walk(n_frames=5)
    tracker = Tracker(rescale_frames=3)
    outs = [tracker.update(d, timestamp=f / FPS)[0] for f, (d, _, _) in enumerate(frames)]
    assert outs[0].bone_lengths_mm is None and outs[1].bone_lengths_mm is None
    raw = np.stack([bone_lengths_of(frames[f][0][0]["kp3d_rel_mm"]) for f in range(3)])
    assert np.allclose(outs[2].bone_lengths_mm, np.median(raw, 0))
    assert np.array_equal(outs[4].bone_lengths_mm, outs[2].bone_lengths_mm)


def test_smoothing_reduces_jitter_of_tracked_people():
    frames = crossing_walk(n_frames=40)
    on, off = Tracker(), Tracker(smooth=False)
    raw, smooth = [], []
    for f, (dets, _, intr) in enumerate(frames):
        raw.append(off.update(dets[:1], f / FPS, intr)[0].kp3d_rel_mm)
        smooth.append(on.update(dets[:1], f / FPS, intr)[0].kp3d_rel_mm)
    assert _jitter(np.array(raw)[10:]) > 2 * _jitter(np.array(smooth)[10:])


def test_tracker_fits_the_skeleton_per_track():
    frames = crossing_walk()                                 # 1.5 m/s
    fitted, plain = Tracker(), Tracker()
    bones = {}
    for f, (dets, scene, intr) in enumerate(frames[:8]):
        out = fitted.update(dets, f / FPS, intr, fit_skeleton=True)
        ref = plain.update(dets, f / FPS, intr)
        for p, q in zip(out, ref):
            assert p.joint_angles is not None and p.joint_angles.shape == (21, 3)
            assert q.joint_angles is None
            # The fit stays on the smoothed 3D it was given...
            assert np.linalg.norm(p.kp3d_cam_mm - q.kp3d_cam_mm, axis=-1).mean() < 20
            assert np.allclose(p.kp3d_rel_mm[skeleton.ROOT_3D], 0)
            assert np.allclose(bone_lengths_of(p.kp3d_rel_mm), p.bone_lengths_mm)
            # ...with one skeleton per track once its bone lengths are known.
            if f >= 2:
                bones.setdefault(p.track_id, p.bone_lengths_mm)
                assert np.allclose(p.bone_lengths_mm, bones[p.track_id], atol=1e-6)
    assert len(bones) == 2


def _moved(kp2d: np.ndarray, dx: float) -> np.ndarray:
    kp = kp2d.copy()
    kp[:, 0] += dx
    return kp


def _paint(img: np.ndarray, kp2d: np.ndarray, bgr: tuple[int, int, int]) -> None:
    """Clothes of one colour over the person's whole box."""
    (x0, y0), (x1, y1) = kp2d[kp2d[:, 2] > 0, :2].min(0).astype(int), kp2d[kp2d[:, 2] > 0, :2].max(0).astype(int)
    img[y0:y1 + 1, x0:x1 + 1] = bgr


def test_a_person_found_again_after_an_occlusion_keeps_their_id_by_the_colour_of_their_clothes():
    """A stands still, goes behind something for half a second and comes out two body widths
    further on; B, in other colours, stays in view. With the frames' colours A gets their id
    back; without them, A is a new person."""
    base = crossing_walk(n_frames=40)[0][0][0]              # a 113 x 171 px person at x 39..152
    results = {}
    for use_colour in (True, False):
        tracker = Tracker(config=TrackerConfig(use_colour=use_colour))
        ids_a = []
        for f in range(45):
            img = np.full((320, 720, 3), 90, np.uint8)
            b = dict(base, kp2d=_moved(base["kp2d"], 520))
            _paint(img, b["kp2d"], (200, 60, 20))              # B: blue
            dets = [b]
            if not 15 <= f < 30:                               # A hidden for 15 frames
                a = dict(base, kp2d=_moved(base["kp2d"], 0 if f < 15 else 330))
                _paint(img, a["kp2d"], (30, 30, 220))           # A: red
                dets.insert(0, a)
            out = tracker.update(dets, timestamp=f / FPS, image=img)
            if len(out) == 2:
                ids_a.append(out[0].track_id)
        results[use_colour] = ids_a
    assert results[True] == [1] * 30, results[True]
    assert results[False][:15] == [1] * 15 and 1 not in results[False][15:], results[False]
