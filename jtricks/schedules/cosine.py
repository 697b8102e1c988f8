"""Cosine annealing: a half-cosine decay, with a linear warmup, and warm restarts (SGDR).

The one-cycle policies, whose rise and fall are cosine-shaped too, are built on
piecewise interpolation and live in :mod:`jtricks.schedules.piecewise`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jtricks import hyperparams as hp
from jtricks.base import Schedule
from jtricks.schedules._steps import step_count
from jtricks.schedules.sequence import Join
from jtricks.schedules.warmups import check_warmup, warmup_then

__all__ = [
    "CosineDecay",
    "WarmupCosineDecay",
    "Sgdr",
    "cosine_decay",
    "warmup_cosine_decay",
    "sgdr",
]


def cosine_value(init_value: Any, decay_steps: Any, alpha: Any, exponent: Any,
                 count: jax.Array) -> jax.Array:
    """``init * ((1 - alpha) * (0.5 * (1 + cos(pi * min(t, T) / T))) ** p + alpha)``."""
    t = jnp.minimum(count, decay_steps)
    half_cos = 0.5 * (1 + jnp.cos(jnp.pi * t / decay_steps))
    return init_value * ((1 - alpha) * half_cos**exponent + alpha)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _ratio(num: Any, den: Any) -> Any:
    """``num / den``, or 0 where ``den == 0`` (computed in Python when both are)."""
    if _is_number(num) and _is_number(den):
        return 0.0 if den == 0 else num / den
    safe = jnp.where(den == 0, 1, den)
    return jnp.where(den == 0, 0.0, num / safe)


class CosineDecay(Schedule):
    """Half-cosine from ``init_value`` to ``alpha * init_value``; see :func:`cosine_decay`."""

    init_value: Any
    decay_steps: Any
    alpha: Any
    exponent: Any

    def __call__(self, count):
        return cosine_value(self.init_value, self.decay_steps, self.alpha, self.exponent,
                            count)


def cosine_decay(init_value: ArrayLike, decay_steps: ArrayLike, alpha: ArrayLike = 0.0,
                 exponent: ArrayLike = 1.0) -> CosineDecay:
    """Cosine annealing (Loshchilov & Hutter, SGDR) over ``decay_steps`` steps.

    With ``T = decay_steps`` and ``t = min(k, T)``::

        v(k) = init_value * ((1 - alpha) * (0.5 * (1 + cos(pi * t / T))) ** exponent + alpha)

    (``optax.cosine_decay_schedule``). A ``decay_steps`` beyond int32, such as
    ``int(1e10)``, is kept as a float, so it works under ``jit`` too.

    Args:
        init_value: the value at step 0.
        decay_steps: the length ``T`` of the decay, > 0.
        alpha: the final value as a fraction of ``init_value``.
        exponent: sharpens (> 1) or flattens (< 1) the cosine; > 0.

    Example:
        >>> sched = jt.schedules.cosine_decay(1e-3, 10_000)
        >>> round(float(sched(5_000)), 6)  # half way down
        0.0005
    """
    where = "cosine_decay"
    decay_steps = step_count(decay_steps)
    hp.check_finite(where, "init_value", init_value)
    hp.check_positive(where, "decay_steps", decay_steps,
                      fix="It is the number of steps over which to decay, e.g. the "
                      "total number of training steps.")
    hp.check_finite(where, "alpha", alpha)
    hp.check_positive(where, "exponent", exponent)
    return CosineDecay(init_value=init_value, decay_steps=decay_steps, alpha=alpha,
                       exponent=exponent)


class WarmupCosineDecay(Schedule):
    """Linear warmup, then cosine decay; see :func:`warmup_cosine_decay`."""

    init_value: Any
    peak_value: Any
    warmup_steps: Any
    decay_steps: Any
    end_value: Any
    exponent: Any

    def __call__(self, count):
        w = self.warmup_steps
        alpha = _ratio(self.end_value, self.peak_value)

        def decay(t):
            return cosine_value(self.peak_value, self.decay_steps - w, alpha,
                                self.exponent, t)

        return warmup_then(self.init_value, self.peak_value, w, decay, count)


def warmup_cosine_decay(init_value: ArrayLike, peak_value: ArrayLike,
                        warmup_steps: ArrayLike, decay_steps: ArrayLike,
                        end_value: ArrayLike = 0.0,
                        exponent: ArrayLike = 1.0) -> WarmupCosineDecay:
    """A linear warmup to ``peak_value``, then a cosine decay to ``end_value``.

    ``decay_steps`` is the length of the whole schedule and includes the warmup (as in
    ``optax.warmup_cosine_decay_schedule``). With ``W = warmup_steps`` and
    ``D = decay_steps``::

        v(k) = init + (peak - init) * k / W                            for k < W
        v(k) = cosine_decay(peak, D - W, end / peak, exponent)(k - W)  for k >= W

    Args:
        init_value: the value at step 0.
        peak_value: the value reached at the end of the warmup.
        warmup_steps: the length ``W`` of the warmup, >= 0.
        decay_steps: the total length ``D``, warmup included; ``D > W``.
        end_value: the value from step ``D`` on.
        exponent: the cosine's exponent (see :func:`cosine_decay`), > 0.

    Example:
        >>> sched = jt.schedules.warmup_cosine_decay(0.0, 1e-3, 500, 10_000)
        >>> [round(float(sched(k)), 6) for k in (250, 500, 10_000)]
        [0.0005, 0.001, 0.0]
    """
    where = "warmup_cosine_decay"
    warmup_steps, decay_steps = step_count(warmup_steps), step_count(decay_steps)
    check_warmup(where, init_value, peak_value, warmup_steps)
    hp.check_finite(where, "end_value", end_value)
    hp.check_positive(where, "decay_steps", decay_steps,
                      fix="It is the total number of steps, warmup included.")
    hp.check_positive(where, "exponent", exponent)
    w = hp.concrete(warmup_steps)
    if w is not None:
        hp.check(where, "decay_steps", decay_steps, lambda d: d > w,
                 f"greater than warmup_steps ({warmup_steps!r})",
                 fix="decay_steps is the length of the whole schedule and includes the "
                 "warmup (as in optax); for a cosine phase of n steps after the warmup "
                 f"pass decay_steps={warmup_steps!r} + n.")
    return WarmupCosineDecay(init_value=init_value, peak_value=peak_value,
                             warmup_steps=warmup_steps, decay_steps=decay_steps,
                             end_value=end_value, exponent=exponent)


class Sgdr(Join):
    """Warm restarts: :class:`WarmupCosineDecay` cycles joined end to end; see
    :func:`sgdr`."""


def sgdr(cosine_kwargs: Iterable[Mapping[str, ArrayLike]]) -> Sgdr:
    """Stochastic gradient descent with warm restarts (Loshchilov & Hutter, SGDR).

    Each element of ``cosine_kwargs`` holds the arguments of one
    :func:`warmup_cosine_decay` cycle; cycle ``i`` starts where cycle ``i - 1`` ends,
    after its ``decay_steps`` steps, and counts its steps from 0 again. With
    ``S_i = decay_steps_0 + ... + decay_steps_{i-1}``::

        v(k) = warmup_cosine_decay(**cosine_kwargs[i])(k - S_i)   for S_i <= k < S_{i+1}

    and the last cycle's end value from its end on (``optax.sgdr_schedule``).

    Args:
        cosine_kwargs: one dict of :func:`warmup_cosine_decay` arguments per cycle
            (``init_value``, ``peak_value``, ``warmup_steps``, ``decay_steps`` and
            optionally ``end_value``, ``exponent``).

    Example:
        >>> cycle = dict(init_value=0.0, peak_value=1e-3, warmup_steps=10,
        ...              decay_steps=100)
        >>> sched = jt.schedules.sgdr([cycle, cycle, cycle])   # restarts at 100, 200
        >>> [round(float(sched(k)), 6) for k in (99, 100, 105, 110)]
        [0.0, 0.0, 0.0005, 0.001]
    """
    where = "sgdr"
    cycles = list(cosine_kwargs)
    if not cycles:
        raise ValueError(f"{where}: cosine_kwargs is empty; give one dict of "
                         "warmup_cosine_decay arguments per cycle.")
    schedules, starts, step = [], [], 0
    for i, kwargs in enumerate(cycles):
        if not isinstance(kwargs, Mapping) or "decay_steps" not in kwargs:
            raise TypeError(
                f"{where}: cosine_kwargs[{i}] must be a dict of warmup_cosine_decay "
                f"arguments with a decay_steps entry, got {kwargs!r}. For example "
                "dict(init_value=0.0, peak_value=1e-3, warmup_steps=10, decay_steps=100)."
            )
        with hp.reporting_as(f"{where} (cosine_kwargs[{i}])"):
            schedules.append(warmup_cosine_decay(**kwargs))
        step = step + kwargs["decay_steps"]
        starts.append(step_count(step))
    return Sgdr(schedules=tuple(schedules), boundaries=tuple(starts[:-1]))
