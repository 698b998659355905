"""xnect_app: real-time multi-person 3D human pose estimation (XNect on SelecSLS)."""
import os

# Before any module imports cv2: quiet FFmpeg's and OpenCV's own console chatter (problems are
# reported as one-line errors).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

__version__ = "0.1.0"
