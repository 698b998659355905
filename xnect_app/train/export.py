"""Moved: `xnect_app.train.release` (checkpoints -> weights file) and `xnect_app.weights` (reading
and writing weights files). This path is kept for one release."""
from .._moved import moved_module

__getattr__ = moved_module(__name__, "xnect_app.train.release", {
    "WEIGHTS_FORMAT": "xnect_app.weights", "read_checkpoint": "xnect_app.weights",
    "_checkpoint_weights": "xnect_app.weights:checkpoint_weights"})
