"""Old import paths of names that moved: they keep working for one release, with a DeprecationWarning.

    __getattr__ = moved_names(__name__, {"letterbox": "xnect_app.runtime.preprocess"})   # some names
    __getattr__ = moved_module(__name__, "xnect_app.runtime.onnx")                        # a whole module
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable

REMOVED_IN = "0.2"


def _serve(module: str, name: str, target: str) -> Any:
    """`target` ("new.module" or "new.module:new_name") for `module.name`, with the warning
    pointed at the code that asked for it."""
    new_module, _, new_name = target.partition(":")
    new_name = new_name or name
    warnings.warn(f"{module}.{name} moved to {new_module}.{new_name}; the old path is removed in "
                  f"xnect_app {REMOVED_IN}", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(new_module), new_name)


def moved_names(module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` serving `names` (name -> "new.module" or "new.module:new_name")."""
    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return _serve(module, name, names[name])
    return __getattr__


def moved_module(module: str, new_module: str, names: dict[str, str] | None = None) -> Callable[[str], Any]:
    """A module `__getattr__` serving every public name of `new_module` (the module moved there),
    and `names` as `moved_names` does (those that went elsewhere)."""
    names = names or {}

    def __getattr__(name: str) -> Any:
        if name in names:
            return _serve(module, name, names[name])
        if name.startswith("__") or not hasattr(importlib.import_module(new_module), name):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return _serve(module, name, new_module)
    return __getattr__
