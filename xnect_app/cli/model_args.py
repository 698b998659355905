"""Moved: `xnect_app.options` (the model-options group, argparse types, one-line errors). This path,
and the keyword-style helpers below, are kept for one release."""
from __future__ import annotations

import argparse
import warnings
from typing import Any

from .._moved import moved_module

__getattr__ = moved_module(__name__, "xnect_app.options")


def estimator_kwargs(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    """Deprecated: options.model_config(args) / options.decode_config(args)."""
    from dataclasses import asdict

    from ..options import decode_config, model_config
    warnings.warn("estimator_kwargs is deprecated: use xnect_app.options.model_config / decode_config",
                  DeprecationWarning, stacklevel=2)
    return {**asdict(model_config(args)), **asdict(decode_config(args)), **overrides}


def build_estimator(**kw: Any):
    """Deprecated: options.build_estimator(ModelConfig, DecodeConfig, TrackConfig)."""
    from ..estimator import PoseEstimator
    from ..options import UserError
    warnings.warn("build_estimator(**keywords) is deprecated: use xnect_app.options.build_estimator(model, "
                  "decode, track)", DeprecationWarning, stacklevel=2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return PoseEstimator(**kw)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise UserError(str(e)) from None
