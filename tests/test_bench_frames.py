"""The frame reader every benchmark uses."""
import cv2
import numpy as np
import pytest

from xnect_app.bench.frames import read_frames
from xnect_app.options import UserError


@pytest.fixture(scope="module")
def numbered_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "numbered.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(20):
        writer.write(np.full((48, 64, 3), i * 10, np.uint8))
    writer.release()
    return path


def _levels(frames):
    return [int(round(f.mean() / 10)) for f in frames]


def test_reads_from_a_start_frame_with_a_stride(numbered_clip):
    assert _levels(read_frames(numbered_clip, 3)) == [0, 1, 2]
    assert _levels(read_frames(numbered_clip, 4, start=5, stride=3)) == [5, 8, 11, 14]
    assert _levels(read_frames(numbered_clip, 100, start=15)) == [15, 16, 17, 18, 19]


def test_unreadable_input_is_a_user_error(numbered_clip, tmp_path):
    with pytest.raises(UserError, match="cannot open"):
        read_frames(tmp_path / "missing.avi", 5)
    with pytest.raises(UserError, match="no frames"):
        read_frames(numbered_clip, 5, start=500)
