"""Moved: `xnect_app.runtime.onnx` (ONNX export and the ONNX Runtime runner). This path is kept
for one release."""
from ._moved import moved_module

__getattr__ = moved_module(__name__, "xnect_app.runtime.onnx")
