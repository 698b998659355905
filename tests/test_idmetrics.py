"""IDF1 and ID switches on small sequences with known answers."""
from __future__ import annotations

import numpy as np

from xnect_app.pose.idmetrics import identity_scores, track_stats


def _box(x: float) -> np.ndarray:
    return np.array([x, 0.0, x + 10.0, 20.0])


def _walk(n: int, ids_a, ids_b=None):
    """GT: A walks right from x=0, B (optional) left from x=200; predictions get the given ids."""
    gt, pred = [], []
    for f in range(n):
        g = [(1, _box(5 * f))] + ([(2, _box(200 - 5 * f))] if ids_b is not None else [])
        p = [(ids_a[f], _box(5 * f + 1))] + ([(ids_b[f], _box(200 - 5 * f - 1))] if ids_b is not None else [])
        gt.append(g)
        pred.append(p)
    return gt, pred


def test_perfect_tracks():
    gt, pred = _walk(10, [7] * 10, [9] * 10)
    s = identity_scores(gt, pred)
    assert s.idf1 == 1.0 and s.id_switches == 0 and s.gt_ids == 2 and s.predicted_ids == 2


def test_a_track_broken_in_two_halves_idf1_and_one_switch():
    gt, pred = _walk(10, [1] * 5 + [2] * 5)
    s = identity_scores(gt, pred)
    assert s.id_switches == 1
    assert np.isclose(s.idf1, 0.5)  # IDTP 5 of 10 ground-truth and 10 predicted boxes


def test_swapped_identities_count_two_switches():
    gt, pred = _walk(10, [1] * 5 + [2] * 5, [2] * 5 + [1] * 5)
    s = identity_scores(gt, pred)
    assert s.id_switches == 2 and np.isclose(s.idf1, 0.5)


def test_people_without_id_are_misses():
    gt, pred = _walk(10, [-1] * 2 + [3] * 8)
    s = identity_scores(gt, pred)
    assert s.id_switches == 0 and np.isclose(s.idr, 0.8) and np.isclose(s.idp, 1.0)


def test_track_stats():
    frames = [[(1, 0.9), (2, 0.3)] for _ in range(25)] + [[(3, 0.9), (-1, 0.5)] for _ in range(5)]
    st = track_stats(frames)
    assert st["track_ids"] == 3 and st["median_track_length"] == 25
    assert np.isclose(st["confident_in_long_tracks"], 25 / 35)  # 25 of A's, none of C's or the id-less


def test_partial_ground_truth_ignores_predictions_of_unlabelled_people():
    gt, pred = _walk(10, [4] * 10, [5] * 10)
    gt = [fr[:1] for fr in gt]              # B is not labelled
    assert identity_scores(gt, pred).idp == 0.5
    s = identity_scores(gt, pred, partial=True)
    assert s.idf1 == 1.0 and s.predicted_ids == 1
