"""Round trips: render Stage I targets for synthetic scenes, decode them, get the people back."""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from xnect_app import skeleton
from xnect_app.pose.decode import decode
from xnect_app.pose.kinematics import DEFAULT_BONE_LENGTHS_MM, fk
from xnect_app.pose.peaks import find_peaks
from xnect_app.pose.readout import read_3d, stage2_inputs
from xnect_app.pose.synthetic import SyntheticScene, place_people, random_scene
from xnect_app.pose.targets import render_targets, to_input, to_map
from xnect_app.types import Intrinsics

SIZE = (512, 320)


def separable(kp2d: np.ndarray, min_cells: float = 3.0) -> bool:
    """No two people have same-type joints (or a neck and a body joint) closer than min_cells:
    closer than that, stride-8 maps cannot tell them apart."""
    m, vis = to_map(kp2d[..., :2]), kp2d[..., 2] > 0
    for p in range(len(m)):
        for q in range(len(m)):
            if p == q:
                continue
            same = np.linalg.norm(m[p] - m[q], axis=-1)[vis[p] & vis[q]]
            neck = np.linalg.norm(m[q, :14] - m[p, skeleton.NECK], axis=-1)[vis[q, :14]] if vis[p, 1] else []
            if (same < min_cells).any() or (np.asarray(neck) < min_cells).any():
                return False
    return True


def scene_where(make, tries: int = 200) -> SyntheticScene:
    for seed in range(tries):
        scene = make(np.random.default_rng(seed))
        if separable(scene.kp2d):
            return scene
    raise AssertionError("no separable scene")


def components(vis: np.ndarray) -> list[np.ndarray]:
    """Labelled joints grouped by connectivity over labelled limbs."""
    comp = np.full(len(vis), -1)
    for start in np.nonzero(vis)[0]:
        if comp[start] >= 0:
            continue
        comp[start], stack = start, [start]
        while stack:
            u = stack.pop()
            for a, b in skeleton.LIMBS_2D:
                for x, y in ((a, b), (b, a)):
                    if x == u and vis[y] and comp[y] < 0:
                        comp[y] = start
                        stack.append(y)
    return [np.nonzero(comp == c)[0] for c in np.unique(comp[comp >= 0])]


def assert_round_trip(scene: SyntheticScene) -> None:
    """Every person comes back (fragments cut off by a missing joint too: the grouping's own
    floor, min_score 0.1, not the estimator's 0.2, which drops parts of 3-4 joints)."""
    from xnect_app.pose.paf import GroupingConfig
    min_score = 0.1
    t = render_targets(scene.kp2d, scene.kp3d_rel_mm, scene.image_size)
    d = decode(t["heatmaps"], t["pafs"], t["enc3d"], grouping=GroupingConfig(min_score=min_score))
    gt = scene.kp2d
    found = np.zeros(gt.shape[:2], dtype=bool)
    for k in range(len(d)):
        det = np.nonzero(d.kp2d[k, :, 2] > 0)[0]
        dist = np.linalg.norm(gt[:, det, :2] - d.kp2d[k, det, :2], axis=-1)
        dist[gt[:, det, 2] <= 0] = np.inf
        who = np.unique(dist.argmin(0))
        assert len(who) == 1, f"decoded person {k} mixes people {who}"
        i = who[0]
        assert dist[i].max() < 1.5, f"2D error {dist[i].max():.2f} px"
        assert not found[i, det].any(), "a joint was decoded twice"
        found[i, det] = True
        v = d.kp3d_valid[k]
        assert v[:14][det[det < 14]].all()
        err3 = np.linalg.norm(scene.kp3d_rel_mm[i, v] - d.kp3d_rel_mm[k, v], axis=-1)
        assert err3.max(initial=0) < 5.0, f"3D error {err3.max():.1f} mm"
        assert np.isnan(d.kp3d_rel_mm[k, ~v]).all()
    # Every joint connected to at least two others through labelled limbs is recovered.
    for i in range(len(gt)):
        for comp in components(gt[i, :, 2] > 0):
            if len(comp) >= 3:
                assert found[i, comp].all(), f"person {i} lost joints {comp[~found[i, comp]]}"


def test_targets_contract():
    rng = np.random.default_rng(3)
    scene = random_scene(rng, 2, layout="spread", height_px=(150, 200))
    kp2d = scene.kp2d.copy()
    kp2d[0, 4, 2] = 0                      # person 0: right wrist unlabelled
    kp3d = scene.kp3d_rel_mm.copy()
    kp3d[0, 7] = np.nan                    # person 0: left wrist 3D unknown
    t = render_targets(kp2d, kp3d, SIZE)
    assert t["heatmaps"].shape == (19, 40, 64) and t["pafs"].shape == (36, 40, 64)
    assert t["enc3d"].shape == t["enc3d_weight"].shape == (63, 40, 64)
    assert all(v.dtype == np.float32 for v in t.values())
    # Heatmap: peak 1 at the labelled joint, nothing for the unlabelled one (unless person 1's).
    x, y = np.rint(to_map(kp2d[1, 10, :2])).astype(int)
    assert t["heatmaps"][10, y, x] > 0.6
    near = np.rint(to_map(kp2d[0, 4, :2])).astype(int)
    far_from_1 = np.linalg.norm(to_map(kp2d[1, 4, :2]) - near) > 4
    assert not far_from_1 or t["heatmaps"][4, near[1], near[0]] < 0.05
    # PAF: unit vector along the limb at its midpoint.
    limb = skeleton.LIMBS_2D.index((9, 10))
    a, b = to_map(kp2d[1, 9, :2]), to_map(kp2d[1, 10, :2])
    mx, my = np.rint((a + b) / 2).astype(int)
    vec = t["pafs"][2 * limb:2 * limb + 2, my, mx]
    assert np.allclose(vec, (b - a) / np.linalg.norm(b - a), atol=1e-5)
    # enc3d: person 1's full pose at its neck, in metres; weights follow the 3D labels.
    nx, ny = np.rint(to_map(kp2d[1, 1, :2])).astype(int)
    assert np.allclose(t["enc3d"][:, ny, nx].reshape(21, 3), scene.kp3d_rel_mm[1] / 1000, atol=1e-6)
    nx, ny = np.rint(to_map(kp2d[0, 1, :2])).astype(int)
    assert t["enc3d_weight"][21:24, ny, nx].sum() == 0 and t["enc3d_weight"][:21, ny, nx].all()
    no3d = render_targets(kp2d, None, SIZE)
    assert no3d["enc3d_weight"].sum() == 0 and np.array_equal(no3d["heatmaps"], t["heatmaps"])


def test_a_person_without_3d_blocks_but_does_not_supervise():
    scene = scene_where(lambda rng: random_scene(rng, 2, layout="spread"))
    kp3d = scene.kp3d_rel_mm.copy()
    kp3d[1] = np.nan
    t = render_targets(scene.kp2d, kp3d, SIZE)
    nx, ny = np.rint(to_map(scene.kp2d[1, 1, :2])).astype(int)
    assert t["enc3d_weight"][:, ny, nx].sum() == 0
    assert t["enc3d_weight"].sum() > 0


def test_find_peaks_subcell_and_border():
    yy, xx = np.mgrid[:10, :12]
    hm = np.zeros((2, 10, 12), np.float32)
    hm[0] = np.exp(-((xx - 3.3) ** 2 + (yy - 4.7) ** 2) / 2)
    hm[1] = np.maximum(np.exp(-((xx + 0.4) ** 2 + (yy - 9.2) ** 2) / 2), 0.5 * np.exp(-((xx - 8) ** 2 + (yy - 2) ** 2) / 2))
    p = find_peaks(hm, threshold=0.1)
    assert np.allclose(p[0], [[3.3, 4.7, 1.0]], atol=1e-4)
    assert np.allclose(p[1], [[-0.4, 9.2, 1.0], [8.0, 2.0, 0.5]], atol=1e-4)
    assert find_peaks(np.zeros((19, 8, 8)), 0.1)[0].shape == (0, 3)


@pytest.mark.parametrize("seed", range(6))
def test_round_trip_one_person(seed):
    assert_round_trip(random_scene(np.random.default_rng(seed), 1, height_px=(60, 250)))


def test_round_trip_three_people():
    for start in (0, 100, 200):
        assert_round_trip(scene_where(lambda rng: random_scene(np.random.default_rng(rng.integers(1 << 30) + start),
                                                               3, layout="spread")))


def test_round_trip_ten_people():
    scene = scene_where(lambda rng: random_scene(rng, 10, layout="grid"))
    assert len(scene) == 10
    assert_round_trip(scene)


def test_round_trip_people_cut_by_the_border():
    scene = scene_where(lambda rng: random_scene(rng, 3, layout="spread", cut_prob=0.7))
    assert (scene.kp2d[..., 2] == 0).any(axis=1).any(), "nobody is cut"
    assert_round_trip(scene)


def test_round_trip_occluded_joints():
    scene = scene_where(lambda rng: random_scene(rng, 5, layout="grid", occlude_prob=0.2))
    assert_round_trip(scene)
    neckless = scene_where(lambda rng: random_scene(rng, 1, occlude_prob=0.0))
    neckless.kp2d[0, skeleton.NECK, 2] = 0    # arms, legs, face come back as separate parts
    assert_round_trip(neckless)


def crossing_pair() -> SyntheticScene:
    """Two people whose left arms cross (the second faces away): same PAF channels overlap."""
    def left_arm_up(shoulder_deg: float, yaw_deg: float) -> tuple[np.ndarray, np.ndarray]:
        a = np.zeros((21, 3))
        a[5] = Rotation.from_euler("z", shoulder_deg, degrees=True).as_rotvec()
        a[2] = Rotation.from_euler("z", -70, degrees=True).as_rotvec()
        return a, Rotation.from_euler("y", yaw_deg, degrees=True).as_rotvec()
    (a1, r1), (a2, r2) = left_arm_up(-60, 0), left_arm_up(-20, 180)
    angles, root_rot = np.stack([a1, a2]), np.stack([r1, r2])
    bones = np.stack([DEFAULT_BONE_LENGTHS_MM] * 2)
    people = {"angles": angles, "root_rot": root_rot, "bone_lengths": bones,
              "kp3d_rel_mm": fk(angles, root_rot, np.zeros(3), bones)}
    return place_people(people, np.array([[226.0, 200.0], [286.0, 180.0]]), np.array([4000.0, 4000.0]),
                        Intrinsics.from_fov(*SIZE, 60), SIZE)


def _segments_cross(p, q, r, s) -> bool:
    def side(a, b, c):
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    return side(p, q, r) * side(p, q, s) < 0 and side(r, s, p) * side(r, s, q) < 0


def test_round_trip_crossing_limbs():
    scene = crossing_pair()
    kp = scene.kp2d
    crossing = [(a, b) for a, b in skeleton.LIMBS_2D if _segments_cross(kp[0, a], kp[0, b], kp[1, a], kp[1, b])]
    assert crossing, "the two arms should cross"
    assert_round_trip(scene)


def test_stage2_inputs_match_between_ground_truth_and_decoding():
    scene = scene_where(lambda rng: random_scene(rng, 3, layout="spread", occlude_prob=0.1))
    t = render_targets(scene.kp2d, scene.kp3d_rel_mm, SIZE)
    d = decode(t["heatmaps"], t["pafs"], t["enc3d"])
    assert len(d) >= 3
    for k in range(len(d)):
        det = d.kp2d[k, :, 2] > 0
        i = np.argmin(np.linalg.norm(scene.kp2d[:, det, :2] - d.kp2d[k, det, :2], axis=-1).mean(1))
        # What the trainer does: ground-truth joints in map cells, confidence 1 where present.
        gt_map = scene.kp2d[i:i + 1].copy()
        gt_map[..., :2] = to_map(gt_map[..., :2])
        gt_map[0, :, 2] = det
        gt_in = stage2_inputs(t["enc3d"], gt_map)
        assert gt_in.shape == (1, 19, 66) and gt_in.dtype == np.float32
        assert np.allclose(d.stage2_in[k], gt_in[0], atol=2e-3)
        assert (gt_in[0, ~det] == 0).all()
        if det[skeleton.NECK]:
            assert np.allclose(gt_in[0, skeleton.NECK, 63:65], 0)
            assert np.abs(gt_in[0, det, 63:65]).max() <= 1.0 + 1e-6


def test_read_3d_without_neck_marks_invalid():
    scene = random_scene(np.random.default_rng(1), 1)
    t = render_targets(scene.kp2d, scene.kp3d_rel_mm, SIZE)
    kp = scene.kp2d.copy()
    kp[..., :2] = to_map(kp[..., :2])
    kp[0, skeleton.NECK, 2] = 0
    pose, valid = read_3d(t["enc3d"], kp)
    assert not valid[0, skeleton.ROOT_3D] and np.isnan(pose[0, skeleton.ROOT_3D]).all()
    assert valid[0, 4] and np.allclose(pose[0, 4], scene.kp3d_rel_mm[0, 4], atol=1)


def test_decode_empty_maps():
    d = decode(np.zeros((19, 40, 64)), np.zeros((36, 40, 64)), np.zeros((63, 40, 64)))
    assert len(d) == 0 and d.kp2d.shape == (0, 19, 3) and d.stage2_in.shape == (0, 19, 66)


def test_cell_centre_mapping():
    assert np.allclose(to_input(to_map(np.array([3.0, 250.0]))), [3.0, 250.0])
    assert np.allclose(to_input(np.array([0.0, 0.0])), [3.5, 3.5])


def test_render_is_fast_enough_for_a_data_loader():
    scene = random_scene(np.random.default_rng(0), 5, image_size=(256, 256))
    render_targets(scene.kp2d, scene.kp3d_rel_mm, (256, 256))
    t0 = time.perf_counter()
    for _ in range(20):
        render_targets(scene.kp2d, scene.kp3d_rel_mm, (256, 256))
    assert (time.perf_counter() - t0) / 20 < 0.05


def test_a_weak_joint_is_completed_from_the_paf():
    """A wrist whose heatmap peak is under the peak threshold: plain grouping loses it, completion
    takes it back at the right place, for the right person, and nobody else gains joints."""
    scene = scene_where(lambda rng: random_scene(rng, 3, layout="spread", occlude_prob=0.0))
    t = render_targets(scene.kp2d, scene.kp3d_rel_mm, scene.image_size)
    wrist = skeleton.JOINTS_2D.index("r_wrist")
    hm = t["heatmaps"].copy()
    hm[wrist] *= 0.08                      # peaks of 0.08 < the 0.1 threshold
    plain = decode(hm, t["pafs"], t["enc3d"], completion_threshold=None)
    done = decode(hm, t["pafs"], t["enc3d"])
    assert len(plain) == len(done) == 3
    assert not (plain.kp2d[:, wrist, 2] > 0).any()
    assert (done.kp2d[:, wrist, 2] > 0).all()
    for k in range(3):
        i = np.linalg.norm(scene.kp2d[:, skeleton.NECK, :2] - done.kp2d[k, skeleton.NECK, :2], axis=-1).argmin()
        assert np.linalg.norm(done.kp2d[k, wrist, :2] - scene.kp2d[i, wrist, :2]) < 1.5
        assert np.isclose(done.kp2d[k, wrist, 2], 0.08, atol=0.01)
        others = np.arange(skeleton.NUM_JOINTS_2D) != wrist
        np.testing.assert_array_equal(done.kp2d[k, others], plain.kp2d[k, others])


def test_completion_skips_what_no_paf_joins():
    """A stray peak with no limb field towards it is not attached to anyone."""
    scene = scene_where(lambda rng: random_scene(rng, 1, occlude_prob=0.0))
    t = render_targets(scene.kp2d, scene.kp3d_rel_mm, scene.image_size)
    ankle = skeleton.JOINTS_2D.index("l_ankle")
    hm, pafs = t["heatmaps"].copy(), t["pafs"].copy()
    hm[ankle] *= 0.08
    knee_ankle = skeleton.LIMBS_2D.index((skeleton.JOINTS_2D.index("l_knee"), ankle))
    pafs[2 * knee_ankle:2 * knee_ankle + 2] = 0.0
    d = decode(hm, pafs, t["enc3d"])
    assert len(d) == 1 and not d.kp2d[0, ankle, 2] > 0


def test_completion_does_not_reach_beyond_the_persons_size():
    """A weak peak far from a small person, joined to it by a strong field, stays unattached."""
    scene = scene_where(lambda rng: random_scene(rng, 1, occlude_prob=0.0))
    t = render_targets(scene.kp2d, scene.kp3d_rel_mm, scene.image_size)
    wrist = skeleton.JOINTS_2D.index("r_wrist")
    hm = t["heatmaps"].copy()
    hm[wrist] *= 0.08
    near = decode(hm, t["pafs"], t["enc3d"])
    assert near.kp2d[0, wrist, 2] > 0
    # the same person, but their known joints cover a tiny box: the wrist is out of reach
    from xnect_app.pose.paf import complete_people
    from xnect_app.pose.peaks import find_peaks
    kp = near.kp2d_map.copy()
    kp[0, wrist] = (np.nan, np.nan, 0.0)
    shoulder, elbow = (skeleton.JOINTS_2D.index(n) for n in ("r_shoulder", "r_elbow"))
    kp[0, [j for j in range(skeleton.NUM_JOINTS_2D) if j not in (shoulder, elbow)]] = (np.nan, np.nan, 0.0)
    limb = np.linalg.norm(near.kp2d_map[0, wrist, :2] - kp[0, elbow, :2])
    short = complete_people(kp, find_peaks(hm, 0.05), t["pafs"], reach=0.5 * limb / np.linalg.norm(
        kp[0, shoulder, :2] - kp[0, elbow, :2]), min_reach=0.0)
    assert not short[0, wrist, 2] > 0
    far = complete_people(kp, find_peaks(hm, 0.05), t["pafs"], reach=100.0)
    assert far[0, wrist, 2] > 0


def test_min_score_drops_faint_people_only():
    from xnect_app.pose.paf import GroupingConfig
    scene = scene_where(lambda rng: random_scene(rng, 2, layout="spread", occlude_prob=0.0))
    t = render_targets(scene.kp2d, scene.kp3d_rel_mm, scene.image_size)
    faint = render_targets(scene.kp2d[1:], scene.kp3d_rel_mm[1:], scene.image_size)
    hm = np.maximum(t["heatmaps"] - 0.65 * faint["heatmaps"], 0)  # person 1 at about a third
    pafs = t["pafs"] - 0.65 * faint["pafs"]
    both = decode(hm, pafs, t["enc3d"])
    assert len(both) == 2 and 0.2 < both.scores[1] < 0.5 < both.scores[0]
    strict = decode(hm, pafs, t["enc3d"], grouping=GroupingConfig(min_score=0.5))
    assert len(strict) == 1 and np.allclose(strict.kp2d[0], both.kp2d[0], equal_nan=True)


def test_peak_sets_equal_separate_calls():
    from xnect_app.pose.peaks import find_peak_sets
    rng = np.random.default_rng(3)
    hm = (rng.random((19, 40, 64)) ** 6).astype(np.float32)
    strong, weak = find_peak_sets(hm, (0.3, 0.05), max_peaks=40)
    for got, t in ((strong, 0.3), (weak, 0.05)):
        for a, b in zip(got, find_peaks(hm, t, 40)):
            np.testing.assert_array_equal(a, b)
