"""How schedules store a step count (a length, a begin, a boundary).

JAX counts in int32 unless 64-bit mode is on. A concrete integer beyond int32, such
as ``decay_steps=int(1e10)`` for "never finish decaying", does not fit: ``jit``
refuses such a Python int as an argument, arithmetic with an int32 count raises, and
a NumPy int64 array is silently wrapped. Such a count is stored as a float instead
(optax's cosine converts its Python-int ``decay_steps`` to float for the same
reason), so the step arithmetic runs in float32 and gives the right value. Every
other count is kept exactly as given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jtricks import hyperparams as hp

__all__ = ["step_count"]

_INT32_MAX = int(np.iinfo(np.int32).max)


def step_count(value: Any) -> Any:
    """``value``, or a float copy of it when it is a concrete integer beyond int32.

    Example:
        >>> step_count(700), step_count(10**10)
        (700, 10000000000.0)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value if abs(value) <= _INT32_MAX else float(value)
    arr = hp.concrete(value)
    if arr is None or arr.dtype.kind not in "iu" or np.all(np.abs(arr) <= _INT32_MAX):
        return value
    return float(arr) if arr.ndim == 0 else arr.astype(np.float64)
