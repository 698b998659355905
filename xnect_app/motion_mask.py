"""Moved: `xnect_app.runtime.motion` (motion masks for DynConv). This path is kept for one release."""
from ._moved import moved_module

__getattr__ = moved_module(__name__, "xnect_app.runtime.motion")
