"""One thread for the estimator's torch work, whichever thread calls it.

torch's OpenMP runtime (libgomp) gives every thread that starts a parallel region its own pool of
worker threads. Once a second thread has one (say the main thread built the networks and a pipeline
thread runs them), there are more OpenMP threads than cores and libgomp stops spinning between
parallel regions: every small op then pays a sleep and a wake-up. Measured on 2 cores, SelecSLS-60
at 512x320 built in the main thread and run in another: dense Stage I 120 ms instead of 106, the
DynConv sparse pass (hundreds of small ops) 73 ms instead of 37. A `clamp_` of 3000x128 floats:
90 us instead of 23.

`PoseEstimator` therefore builds its networks and runs Stage I/II on one long-lived thread of the
process (`on_torch_thread`), so a process that uses torch only through estimators keeps one pool.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

__all__ = ["on_torch_thread", "is_torch_thread"]

T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_ident: int | None = None
_pid: int | None = None


def is_torch_thread() -> bool:
    return _ident is not None and threading.get_ident() == _ident and _pid == os.getpid()


def on_torch_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs) on the torch thread (started on first use); inline when already on it.

    Exceptions propagate to the caller. A forked child starts its own thread."""
    global _executor, _ident, _pid
    if is_torch_thread():
        return fn(*args, **kwargs)
    with _lock:
        if _executor is None or _pid != os.getpid():
            _executor = ThreadPoolExecutor(1, thread_name_prefix="xnect-torch")
            _ident = _executor.submit(threading.get_ident).result()
            _pid = os.getpid()
        executor = _executor
    return executor.submit(fn, *args, **kwargs).result()
