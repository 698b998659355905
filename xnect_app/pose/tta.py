"""Moved: `xnect_app.runtime.tta` (test-time augmentation of Stage I maps). This path is kept for
one release."""
from .._moved import moved_module

__getattr__ = moved_module(__name__, "xnect_app.runtime.tta")
